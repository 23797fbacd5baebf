"""A token bucket capping how many images per second a producer sends."""

from __future__ import annotations

import math
import re
import time
from typing import Callable

_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?:/\s*(s|sec|m|min|h))?\s*$")
_PER = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """Images per second from "50", "2.5", "50/s", "600/min" or "3600/h".

    Raises:
        ValueError: naming ``text`` and the accepted forms; the rate must be finite and > 0.
    """
    match = _RATE_RE.match(str(text))
    rate = float(match.group(1)) / _PER[match.group(2)] if match else math.nan
    if not match or not math.isfinite(rate) or rate <= 0:
        raise ValueError(
            f"rate {text!r} is not a positive number of images per second; use e.g. 50, 2.5, 600/min or 3600/h"
        )
    return rate


class TokenBucket:
    """Allows ``rate`` acquisitions per second on average, with bursts of at most ``burst``.

    Args:
        rate: tokens added per second (> 0).
        burst: bucket capacity (>= 1); 1 spaces acquisitions evenly.
        clock, sleep: injectable for tests (seconds).
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
        if not burst >= 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    def acquire(self) -> float:
        """Take one token, sleeping until one is available; returns the seconds slept."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        wait = (1.0 - self._tokens) / self.rate
        self._sleep(wait)
        self._last = self._clock()
        self._tokens = 0.0  # the token that accrued while sleeping is spent now
        return wait
