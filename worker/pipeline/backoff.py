"""How long to wait before retrying a dependency that is down: capped exponential backoff with full jitter.

The n-th retry waits a uniform random time in [0, min(cap_s, base_s * 2 ** (n - 1))]. The random
spread ("full jitter") keeps a fleet of workers that lost the same Redis or broker at the same moment
from retrying in lock-step and knocking it over again as it recovers.
"""

from __future__ import annotations

import random

BASE_S = 0.5  # ceiling of the first retry's wait


def backoff_delay(attempt: int, cap_s: float, *, base_s: float = BASE_S, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    Raises:
        ValueError: ``attempt`` < 1, or ``cap_s`` or ``base_s`` not positive.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts retries from 1, got {attempt}")
    if cap_s <= 0 or base_s <= 0:
        raise ValueError(f"cap_s and base_s must be positive seconds, got cap_s={cap_s}, base_s={base_s}")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 62))
    return (rng or random).uniform(0.0, ceiling)
