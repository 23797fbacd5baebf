"""Retry delays: capped exponential ceilings, fully jittered below them."""

from __future__ import annotations

import random

import pytest

from worker.pipeline.backoff import backoff_delay


def test_ceiling_doubles_per_retry_up_to_the_cap():
    rng = random.Random(0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (500, 5.0)]:
        draws = [backoff_delay(attempt, 5.0, rng=rng) for _ in range(2000)]
        assert 0.0 <= min(draws) and max(draws) <= ceiling
        assert max(draws) > 0.95 * ceiling  # the whole range is used ...
        assert min(draws) < 0.05 * ceiling  # ... down to zero (full jitter, not half)


@pytest.mark.parametrize("attempt, cap, base", [(0, 1.0, 0.5), (1, 0.0, 0.5), (1, 1.0, -1.0)])
def test_bad_arguments_are_named(attempt, cap, base):
    with pytest.raises(ValueError, match="attempt|cap_s"):
        backoff_delay(attempt, cap, base_s=base)
