"""``python -m tempme_composer.bench NAME [ARGS...]``: run one benchmark (see `tempme_composer.bench`)."""

from __future__ import annotations

import importlib
import logging
import sys

from tempme_composer.bench import BENCHMARKS


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in BENCHMARKS:
        names = ', '.join(BENCHMARKS)
        got = f'unknown benchmark {args[0]!r}; ' if args and args[0] not in ('-h', '--help') else ''
        sys.exit(f'usage: python -m tempme_composer.bench NAME [ARGS...]\n{got}NAME is one of: {names}')
    logging.basicConfig(level=logging.WARNING)
    importlib.import_module(BENCHMARKS[args[0]]).main(args[1:])


if __name__ == '__main__':
    main()
