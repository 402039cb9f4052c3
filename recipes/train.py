"""Train / evaluate a text-video retrieval model: ``composer recipes/train.py yamls/X.yaml [key=value ...]``."""

import sys

from tempme_composer.train import main

if __name__ == '__main__':
    sys.exit(main())
