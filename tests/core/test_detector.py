"""A real tiny detector trained on generated textures: separation, maps, round trips, invariances."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from synthetic import make_texture_images
from worker.core.detector import Detector


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return Detector.from_pretrained(tiny_bundle, "cpu")


@pytest.fixture(scope="module")
def test_images():
    good, _ = make_texture_images(16, seed=101)
    bad, masks = make_texture_images(16, defect=True, seed=102)
    return good, bad, masks


def test_separates_generated_defects(detector, test_images):
    good, bad, _ = test_images
    result = detector.predict(good + bad)
    labels = np.r_[np.zeros(len(good)), np.ones(len(bad))]
    assert roc_auc_score(labels, result.pred_score) >= 0.9
    assert result.pred_label[len(good):].mean() >= 0.8, "most defects must be flagged"
    assert result.pred_label[:len(good)].mean() <= 0.2, "few normals may be flagged at a 1 % target FPR"


def test_anomaly_map_peaks_on_the_defect(detector, test_images):
    _, bad, masks = test_images
    result = detector.predict(bad)
    assert result.anomaly_map.shape == (len(bad), detector.image_size, detector.image_size)
    # The map lives on a stride-16 grid: accept a peak within one grid cell of the drawn defect.
    hits = 0
    for anomaly_map, mask in zip(result.anomaly_map, masks):
        near = ndimage.binary_dilation(mask, iterations=16)
        hits += near[np.unravel_index(anomaly_map.argmax(), anomaly_map.shape)]
    assert hits >= 0.8 * len(bad)


def test_save_load_round_trip_is_bit_identical(detector, test_images, tmp_path):
    good, bad, _ = test_images
    before = detector.predict(good[:4] + bad[:4])
    detector.save_pretrained(tmp_path / "copy")
    again = Detector.from_pretrained(tmp_path / "copy", "cpu")
    after = again.predict(good[:4] + bad[:4])
    assert again.version == detector.version
    assert np.array_equal(before.pred_score, after.pred_score)
    assert np.array_equal(before.anomaly_map, after.anomaly_map)
    assert np.array_equal(before.threshold, after.threshold)


def test_scores_do_not_depend_on_batch_size_or_composition(detector, test_images):
    good, bad, _ = test_images
    together = detector.predict(good[:6] + bad[:6]).pred_score
    alone = np.concatenate([detector.predict([im]).pred_score for im in good[:6] + bad[:6]])
    shuffled_order = [5, 11, 0, 7, 3, 9, 1, 10, 2, 8, 4, 6]
    images = good[:6] + bad[:6]
    shuffled = detector.predict([images[i] for i in shuffled_order]).pred_score
    np.testing.assert_allclose(alone, together, rtol=0, atol=1e-4)
    np.testing.assert_allclose(shuffled, together[shuffled_order], rtol=0, atol=1e-4)


def test_any_input_size_and_mode(detector, test_images):
    good, _, _ = test_images
    image = good[0]
    variants = [image.resize((300, 200)), image.convert("L"), image.convert("P"),
                image.convert("RGBA"), image.convert("I;16")]
    result = detector.predict(variants)
    assert np.isfinite(result.pred_score).all()


def test_prepared_arrays_score_exactly_like_images(detector, test_images):
    """The worker prepares uint8 arrays in its fetch threads; the model must give the same result."""
    from worker.core.images import model_input
    good, bad, _ = test_images
    images = [good[0].resize((100, 70)), bad[0]]
    from_images = detector.predict(images)
    from_arrays = detector.predict([model_input(image, detector.image_size) for image in images])
    np.testing.assert_array_equal(from_images.pred_score, from_arrays.pred_score)
    np.testing.assert_array_equal(from_images.anomaly_map, from_arrays.anomaly_map)
    with pytest.raises(ValueError, match="uint8 array"):
        detector.predict([np.zeros((8, 8, 3), dtype=np.uint8)])


def test_steps_change_the_evaluation_count(detector, test_images):
    good, _, _ = test_images
    calls = []
    handle = detector.denoisers[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        x0 = detector.features(detector.to_pixels(good[:2]))
        labels = torch.zeros(2, dtype=torch.long)
        for steps in (1, 2, 5):
            calls.clear()
            path = detector.inversion_path(x0, labels, steps)
            assert len(calls) == len(path) == steps  # S evaluations of each member
            assert all(len(states) == detector.config.members for states in path)
    finally:
        handle.remove()


def test_unknown_product_is_refused(detector, test_images):
    good, _, _ = test_images
    with pytest.raises(ValueError, match="serves"):
        detector.predict(good[:1], ["no-such-product"])


def test_class_conditional_bundle(tmp_path):
    """Two products in one bundle; F1-max thresholds from a validation set scored with each image's class."""
    from synthetic import write_mvtec_category
    from worker.core.config import DetectorConfig
    from worker.core.data import test_samples
    from worker.core.evaluate import evaluate_path
    from worker.core.images import load_image
    from worker.core.scoring import threshold_f1_max
    from worker.core.train import TrainConfig, train

    a = write_mvtec_category(tmp_path / "alpha", n_train=12, size=64, seed=1)
    b = write_mvtec_category(tmp_path / "beta", n_train=12, size=64, seed=2)
    validation = tmp_path / "validation"
    write_mvtec_category(validation / "alpha", n_train=0, n_good=6, n_bad=6, size=64, seed=3)
    write_mvtec_category(validation / "beta", n_train=0, n_good=6, n_bad=6, size=64, seed=4)
    detector, summary = train([a, b], tmp_path / "unified", DetectorConfig(image_size=64),
                              TrainConfig(iterations=20, batch_size=8, width=16, num_blocks=1, warmup=5),
                              validation=validation, progress=False)
    assert detector.classes == ("alpha", "beta")
    assert detector.denoisers[0].config.num_classes == 2
    assert set(summary["calibration"]) == {"alpha", "beta"}
    assert all("validation_f1" in summary["calibration"][name] for name in ("alpha", "beta"))
    loaded = Detector.from_pretrained(tmp_path / "unified", "cpu")
    for name in ("alpha", "beta"):  # each threshold is F1-max over its own class's images, scored as that class
        samples = [s for s in test_samples(validation, loaded.classes) if s.cls == name]
        scores = loaded.predict([load_image(s.path) for s in samples], [name] * len(samples)).pred_score
        expected, _ = threshold_f1_max(scores, np.array([s.label for s in samples]))
        assert loaded.thresholds[loaded.classes.index(name)].item() == pytest.approx(expected, abs=1e-3)
    images, _ = make_texture_images(2, size=64)
    result = loaded.predict(images, ["alpha", "beta"])
    assert result.threshold.tolist() == pytest.approx(loaded.thresholds.tolist())

    # Recalibration goes one product at a time; the other keeps its threshold and calibration scores.
    from worker.quality.thresholds import recalibrate

    with pytest.raises(ValueError, match="--product"):
        recalibrate(tmp_path / "unified", b / "train" / "good", progress=False)
    with pytest.raises(ValueError, match="serves"):
        recalibrate(tmp_path / "unified", b / "train" / "good", product="gamma", progress=False)
    report = recalibrate(tmp_path / "unified", b / "train" / "good", tmp_path / "beta-again", product="beta",
                         target_fpr=0.2, progress=False)
    again = Detector.from_pretrained(tmp_path / "beta-again", "cpu")
    assert report["product"] == "beta" and report["calibration_images"] == 12
    assert float(again.thresholds[0]) == float(loaded.thresholds[0])
    assert float(again.thresholds[1]) == pytest.approx(report["threshold"])
    assert again.calibration_scores["alpha"] == loaded.calibration_scores["alpha"]
    assert len(again.calibration_scores["beta"]) == 12
    with pytest.raises(ValueError, match="several products"):
        loaded.predict(images)
    report = evaluate_path(loaded, str(validation), progress=False)
    assert report["n_images"] == 24 and report["pixel_auroc"] is not None
    with pytest.raises(ValueError, match="lacks"):
        evaluate_path(loaded, str(validation / "alpha"), progress=False)


def test_training_is_reproducible_and_resumable(tmp_path, texture_category):
    """Same seed, same data: the same bundle, also when training is killed and resumed. An ensemble of two:
    the kill comes while the second member trains, so resuming keeps the first and continues the second."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from worker.cli import main

    # 100 steps, a checkpoint every 20: the victim is killed at its second member's first checkpoint
    args = ["train", str(texture_category), "--image-size", "64", "--iterations", "100", "--batch-size", "8",
            "--width", "16", "--blocks", "1", "--checkpoint-every", "20", "--members", "2"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0  # in this process: one interpreter start less
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    victim = subprocess.Popen([sys.executable, "-m", "worker.cli", *args, "--out", str(tmp_path / "b")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "b.checkpoint" / "member-1" / "state.json"
    deadline = time.monotonic() + 300
    while not state.is_file() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert state.is_file() and not (tmp_path / "b").exists(), "killed mid-training: a checkpoint, no bundle"
    assert (tmp_path / "b.checkpoint" / "member-0-final").is_dir(), "the first member was kept whole"
    assert main(args + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    resumed, whole = Detector.from_pretrained(tmp_path / "b"), Detector.from_pretrained(tmp_path / "a")
    assert resumed.config.members == whole.config.members == 2 and resumed.version == whole.version
    assert not (tmp_path / "b.checkpoint").exists(), "a finished training removes its checkpoint"


def test_a_finer_latent_grid_round_trips_through_the_bundle(tmp_path):
    """grid_stride 8: taps at strides 4, 8, 16 meet on the stride-8 grid (the stride-16 one upsampled)."""
    from worker.core.config import DetectorConfig
    from worker.core.train import TrainConfig, build_detector, calibrate, fit_statistics

    detector = build_detector(DetectorConfig(image_size=64, grid_stride=8), TrainConfig(width=16, num_blocks=1))
    assert detector.extractor.grid == 8 and detector.position_mean.shape[-1] == 8
    images, _ = make_texture_images(12, size=64)
    features = detector.features(detector.to_pixels(images))
    labels = torch.zeros(12, dtype=torch.long)
    fit_statistics(detector, features[:6], labels[:6])
    calibrate(detector, features[6:], labels[6:])
    detector.save_pretrained(tmp_path / "fine")
    loaded = Detector.from_pretrained(tmp_path / "fine", "cpu")
    assert loaded.config.grid_stride == 8 and loaded.extractor.grid == 8
    assert loaded.predict(images[:2]).anomaly_map.shape == (2, 64, 64)
    with pytest.raises(ValueError, match="grid_stride must be 4, 8 or 16"):
        DetectorConfig(grid_stride=2)
