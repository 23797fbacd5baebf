"""The CUDA path (bf16 autocast, channels_last, pinned memory): run where a GPU is present."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from synthetic import make_texture_images
from worker.core.detector import Detector

pytestmark = pytest.mark.gpu


def test_cuda_scores_agree_with_cpu(tiny_bundle):
    cpu = Detector.from_pretrained(tiny_bundle, "cpu")
    gpu = Detector.from_pretrained(tiny_bundle, "cuda")
    good, _ = make_texture_images(8, seed=201)
    bad, _ = make_texture_images(8, defect=True, seed=202)
    on_cpu, on_gpu = cpu.predict(good + bad), gpu.predict(good + bad)
    labels = np.r_[np.zeros(8), np.ones(8)]
    assert roc_auc_score(labels, on_gpu.pred_score) >= 0.9
    # bf16 autocast: close to the float32 CPU scores, not equal.
    assert np.corrcoef(on_cpu.pred_score, on_gpu.pred_score)[0, 1] > 0.98
    assert on_gpu.anomaly_map.dtype == np.float32


def test_cuda_training_step(texture_category, tmp_path):
    from worker.core.config import DetectorConfig
    from worker.core.train import TrainConfig, train

    detector, summary = train([texture_category], tmp_path / "gpu", DetectorConfig(image_size=64),
                              TrainConfig(iterations=20, batch_size=8, width=16, num_blocks=1, warmup=5),
                              device="cuda", progress=False)
    assert summary["device"].startswith("cuda") and np.isfinite(summary["final_loss"])
    assert Detector.from_pretrained(tmp_path / "gpu", "cuda").device.type == "cuda"
    assert torch.cuda.max_memory_allocated() > 0


def test_cuda_prepared_arrays_match_images(tiny_bundle):
    """Pinned uint8 arrays copied to the device and normalised there score like PIL images."""
    from worker.core.images import model_input
    gpu = Detector.from_pretrained(tiny_bundle, "cuda")
    good, _ = make_texture_images(4, seed=203)
    assert gpu.to_pixels(good).is_pinned()
    arrays = [model_input(image, gpu.image_size) for image in good]
    np.testing.assert_allclose(gpu.predict(good).pred_score, gpu.predict(arrays).pred_score, rtol=1e-5, atol=1e-5)


def test_cuda_compiled_detector_scores_like_eager(tiny_bundle):
    """torch.compile (what `invad bench --compile` measures) must not change the scores."""
    eager = Detector.from_pretrained(tiny_bundle, "cuda")
    compiled = Detector.from_pretrained(tiny_bundle, "cuda").compile_networks("default")
    good, _ = make_texture_images(8, seed=204)
    np.testing.assert_allclose(eager.predict(good).pred_score, compiled.predict(good).pred_score, rtol=0.05, atol=0.05)
