"""The producers stay light: importing them, or building the `invad` parser, never loads torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
HEAVY = ("torch", "torchvision", "diffusers", "numpy", "PIL")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_producers_and_the_shared_helpers_import_no_heavy_module():
    assert _loaded_after("import producers.cli, producers.sources, producers.s3, producers.publisher\n"
                         "import worker.core.imagefiles, worker.common.s3client, worker.common.cliargs") == []


def test_the_invad_parser_does_not_load_torch():
    loaded = _loaded_after("from worker.cli import build_parser\nbuild_parser()")
    assert "torch" not in loaded and "diffusers" not in loaded
