"""The spread of one metric over runs that differ only in their seed: mean ± sample standard deviation, range.

A retrain with another seed moves text→video R@1 by tenths of a point on the real benchmarks; a single run's
number is one draw of that spread (docs/evaluation.md#spread-over-seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ['spread']


def spread(values: Sequence[float]) -> dict[str, float]:
    """``{'mean', 'std', 'min', 'max', 'n'}`` of ``values``; ``std`` is the sample standard deviation (n − 1 in
    the denominator, the estimate of the seed-to-seed spread), 0 for a single value."""
    if not values:
        raise ValueError('no values to summarise')
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {'mean': mean, 'std': std, 'min': min(values), 'max': max(values), 'n': n}
