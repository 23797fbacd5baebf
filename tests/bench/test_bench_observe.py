"""What the pipeline bench reads from outside the workers: process CPU time and the --watch-pids flag."""

from __future__ import annotations

import os
import time

import pytest

from worker.bench.observe import parse_pids, process_cpu_s


def test_process_cpu_grows_with_work_and_is_none_for_a_missing_process():
    before = process_cpu_s(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert process_cpu_s(os.getpid()) - before >= 0.2
    assert process_cpu_s(2**22 + 1) is None  # above Linux's largest pid


def test_watch_pids_parse_and_name_a_bad_entry():
    assert parse_pids("kafka=12, redis=34") == {"kafka": 12, "redis": 34}
    assert parse_pids(None) == {}
    with pytest.raises(ValueError, match="'redis' is not name=pid"):
        parse_pids("kafka=12,redis")
