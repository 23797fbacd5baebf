"""Replacing a bundle is crash-safe: killed at any step, the folder still loads (old or new, never none)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from worker.core import bundle
from worker.core.bundle import aside_path
from worker.core.detector import Detector

# Saves a changed copy of SOURCE over TARGET and dies (os._exit: no handler, no cleanup runs) just
# before the CRASH_AT-th file-system step of the replacement: 1 = set the old bundle aside, 2 = rename
# the new one in, 3 = delete the old one.
CRASHING_SAVE = """
import os, shutil, sys
from worker.core import bundle
from worker.core.detector import Detector

source, target, crash_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
detector = Detector.from_pretrained(source, "cpu")
detector.thresholds += 1.0
steps = [0]

def step(real):
    def run(*args, **kwargs):
        steps[0] += 1
        if steps[0] == crash_at:
            os._exit(17)
        return real(*args, **kwargs)
    return run

swap_in = bundle._swap_in

def crashing_swap_in(staging, path):
    os.rename, shutil.rmtree = step(os.rename), step(shutil.rmtree)
    swap_in(staging, path)

bundle._swap_in = crashing_swap_in
detector.save_pretrained(target)
"""


@pytest.fixture(scope="module")
def versions(tiny_bundle, tmp_path_factory):
    """(old, new) versions: the tiny bundle, and the changed copy the crashing save writes."""
    detector = Detector.from_pretrained(tiny_bundle, "cpu")
    old = detector.version
    detector.thresholds += 1.0
    detector.save_pretrained(tmp_path_factory.mktemp("expected") / "new")
    assert detector.version != old
    return old, detector.version


@pytest.mark.parametrize("crash_at, survivor", [(1, "old"), (2, "old"), (3, "new")])
def test_a_save_killed_at_any_step_leaves_a_loadable_bundle(tiny_bundle, tmp_path, versions, crash_at, survivor):
    target = tmp_path / "model"
    shutil.copytree(tiny_bundle, target)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", CRASHING_SAVE, str(tiny_bundle), str(target), str(crash_at)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 17, done.stderr[-2000:]
    assert target.exists() or aside_path(target).exists()
    loaded = Detector.from_pretrained(target, "cpu")
    assert loaded.version == dict(zip(("old", "new"), versions))[survivor]
    # The next save completes the replacement and tidies up.
    loaded.thresholds += 2.0
    loaded.save_pretrained(target)
    assert Detector.from_pretrained(target, "cpu").version == loaded.version
    assert target.is_dir() and not aside_path(target).exists()


def test_a_failed_rename_puts_the_old_bundle_back(tiny_bundle, tmp_path, versions, monkeypatch):
    target = tmp_path / "model"
    shutil.copytree(tiny_bundle, target)
    detector = Detector.from_pretrained(target, "cpu")
    detector.thresholds += 1.0
    real_rename = os.rename

    def rename(src, dst):
        if str(src).startswith(str(tmp_path / ".model.")) and not str(src).endswith(".old"):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        detector.save_pretrained(target)
    monkeypatch.undo()
    assert Detector.from_pretrained(target, "cpu").version == versions[0]
    assert not aside_path(target).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "the staging folder is removed"


def test_a_bundle_saved_into_an_empty_place_and_a_missing_one(tiny_bundle, tmp_path):
    detector = Detector.from_pretrained(tiny_bundle, "cpu")
    detector.save_pretrained(tmp_path / "deep" / "er" / "model")
    assert Detector.from_pretrained(tmp_path / "deep" / "er" / "model", "cpu").version == detector.version
    with pytest.raises(bundle.BundleError, match="does not exist"):
        Detector.from_pretrained(tmp_path / "nothing", "cpu")


def test_an_incomplete_aside_folder_is_not_loaded(tiny_bundle, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_bundle, aside_path(target))
    (aside_path(target) / bundle.TENSORS_FILE).unlink()
    with pytest.raises(bundle.BundleError, match="does not exist"):
        Detector.from_pretrained(target, "cpu")


def test_an_uncalibrated_detector_is_not_saved(tiny_bundle, tmp_path):
    detector = Detector.from_pretrained(tiny_bundle, "cpu")
    detector.thresholds.fill_(float("inf"))
    with pytest.raises(bundle.BundleError, match="not calibrated"):
        detector.save_pretrained(tmp_path / "model")
    assert not any(tmp_path.iterdir())


def test_the_bundle_holds_every_tensor_of_the_detector_but_the_denoisers(tiny_bundle):
    contents = bundle.load_bundle(tiny_bundle)
    detector = Detector.from_pretrained(tiny_bundle, "cpu")
    state = detector.state_dict()
    assert set(contents.tensors) == {k for k in state if not k.startswith("denoisers.")}
    assert all(torch.equal(contents.tensors[k], state[k]) for k in contents.tensors)
