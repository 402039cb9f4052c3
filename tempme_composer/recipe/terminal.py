"""The recipe's Python logging on the terminal, beside Composer's progress bars.

Composer draws its bars with tqdm (on stderr) and redraws them in place with a carriage return, so a plain
``print`` or ``StreamHandler`` line would start at the end of a half-drawn bar. Our records go through
``tqdm.write`` instead, which clears every active bar, writes the line and redraws the bars below it (with no
bar active it is a plain write: the same text). Epochs are numbered from 0 everywhere on the terminal, as
Composer's bar (``train Epoch   0``) and `TrainLogLine` (``Epoch: 0 (of 2)``) both print them.
"""

from __future__ import annotations

import logging
import sys

from composer.utils import dist
from tqdm import tqdm

__all__ = ['TqdmWriteHandler', 'configure_logging']


class TqdmWriteHandler(logging.StreamHandler):
    """A stream handler that writes each record with ``tqdm.write`` so it never lands inside a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Python logging to stdout with the rank in every line (library code never prints)."""
    rank = dist.get_global_rank()
    handler = TqdmWriteHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f'%(asctime)s rank{rank} %(name)s: %(message)s', '%H:%M:%S'))
    root = logging.getLogger('tempme_composer')
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
