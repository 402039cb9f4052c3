"""``python -m tempme_composer.serve``: the same as ``tempme-serve``."""

import sys

from tempme_composer.serve.cli import main

if __name__ == '__main__':
    sys.exit(main())
