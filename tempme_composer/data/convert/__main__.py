"""``python -m tempme_composer.data.convert``: the ``tempme-convert`` command."""

import sys

from tempme_composer.data.convert.cli import main

sys.exit(main())
