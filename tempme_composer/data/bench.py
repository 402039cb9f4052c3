"""Alias kept for ``python -m tempme_composer.data.bench``: the data benchmark is `tempme_composer.bench.data`
(``python -m tempme_composer.bench data``)."""

from __future__ import annotations

from tempme_composer.bench.data import main

__all__ = ['main']

if __name__ == '__main__':
    main()
