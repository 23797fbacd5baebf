"""Every bad input of the detector core gets a clear error that names the problem and the fix."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from worker.core.backbone import BackboneSpec, BackboneWeightsError, pretrained_extractor
from worker.core.bundle import BundleError
from worker.core.config import DetectorConfig
from worker.core.data import DatasetLayoutError, normal_training_images, mvtec_test_set
from worker.core.detector import Detector
from worker.core.images import ImageDecodeError, decode_image, load_image


def png_bytes(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_truncated_and_non_image_bytes(tmp_path):
    data = png_bytes(Image.new("RGB", (64, 64), (10, 20, 30)))
    with pytest.raises(ImageDecodeError, match="not a readable image") as info:
        decode_image(data[: len(data) // 2], name="half.png")
    assert info.value.reason == "image_invalid" and "half.png" in str(info.value)
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_image(b"this is not an image")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="cannot read"):
        load_image(tmp_path / "missing.png")


def test_too_many_pixels_is_refused_before_decoding():
    data = png_bytes(Image.new("L", (300, 300)))
    with pytest.raises(ImageDecodeError, match="exceeds the limit") as info:
        decode_image(data, max_pixels=10_000)
    assert info.value.reason == "image_too_large"


def test_modes_are_converted_to_rgb():
    sixteen = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 10).astype(np.uint16))
    for image in (sixteen, Image.new("P", (8, 8)), Image.new("1", (8, 8)), Image.new("LA", (8, 8)),
                  Image.new("CMYK", (8, 8)), Image.new("F", (8, 8))):
        decoded = decode_image(png_bytes(image) if image.mode not in ("CMYK", "F") else _tiff(image))
        assert decoded.mode == "RGB"
    assert np.asarray(decode_image(png_bytes(sixteen))).max() == 255, "16-bit images are rescaled, not clipped"


def _tiff(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    return buffer.getvalue()


def test_missing_and_mismatched_backbone_weights(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        pretrained_extractor(BackboneSpec(image_size=64), tmp_path / "nope.pth")
    with pytest.raises(BackboneWeightsError, match="--backbone-weights"):
        pretrained_extractor(BackboneSpec("efficientnet_b4", image_size=64))
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(BackboneWeightsError, match="missing keys") as info:
        pretrained_extractor(BackboneSpec(image_size=64), tmp_path / "wrong.pth")
    assert "wrong.pth" in str(info.value) and "expected keys" in str(info.value)


@pytest.mark.parametrize("name", ["efficientnet_b4", "wide_resnet50_2", "efficientnet-lite1"])
def test_backbones_load_from_a_weight_file(tmp_path, name):
    import torchvision
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    model = EfficientNet.from_name(name) if name.startswith("efficientnet-") else \
        getattr(torchvision.models, name)(weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    extractor = pretrained_extractor(BackboneSpec(name, (4, 8, 16), 64), path)
    features = extractor(torch.zeros(1, 3, 64, 64))
    assert features.shape[-1] == 4 and features.shape[1] == extractor.channels
    first = next(iter(extractor.units[0].parameters()))
    assert torch.equal(first, next(iter(model.parameters()))), "the file's weights are the ones used"


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def test_missing_bundle_and_partial_bundle(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Detector.from_pretrained(tmp_path / "nothing")
    (bundle_copy / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(BundleError, match="incomplete: missing denoiser/diffusion_pytorch_model.safetensors"):
        Detector.from_pretrained(bundle_copy)


def test_corrupt_bundle_files(bundle_copy):
    tensors = bundle_copy / "detector.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:1000])
    with pytest.raises(BundleError, match="detector.safetensors is corrupt"):
        Detector.from_pretrained(bundle_copy)
    (bundle_copy / "detector_config.json").write_text("{not json")
    with pytest.raises(BundleError, match="detector_config.json is corrupt"):
        Detector.from_pretrained(bundle_copy)


def test_newer_bundle_format_is_refused(bundle_copy):
    path = bundle_copy / "detector_config.json"
    config = json.loads(path.read_text())
    config["format_version"] = 99
    path.write_text(json.dumps(config))
    with pytest.raises(BundleError, match="format 99, newer than this invad supports"):
        Detector.from_pretrained(bundle_copy)


def test_bundle_config_with_bad_values(bundle_copy):
    path = bundle_copy / "detector_config.json"
    config = json.loads(path.read_text())
    config["steps"] = 0
    path.write_text(json.dumps(config))
    with pytest.raises(BundleError, match="steps must be in 1..10"):
        Detector.from_pretrained(bundle_copy)


def test_detector_config_validation():
    with pytest.raises(ValueError, match="unknown backbone"):
        DetectorConfig(backbone="resnet9000")
    with pytest.raises(ValueError, match="score_components"):
        DetectorConfig(score_components=("nll", "magic"))
    with pytest.raises(ValueError, match="multiple of 16"):
        DetectorConfig(image_size=100)
    with pytest.raises(ValueError, match="multiple of 32"):  # a stride-32 tap needs whole cells
        DetectorConfig(image_size=240, strides=(4, 8, 16, 32), grid_stride=16)
    with pytest.raises(ValueError, match="subset of 2, 4, 8, 16, 32"):
        DetectorConfig(strides=(4, 64))


def test_empty_training_folder_and_wrong_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images in"):
        normal_training_images(tmp_path / "empty")
    (tmp_path / "category" / "train" / "bad").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no train/good folder"):
        normal_training_images(tmp_path / "category")
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        normal_training_images(tmp_path / "absent")
    with pytest.raises(DatasetLayoutError, match="no test/ folder"):
        mvtec_test_set(tmp_path / "category")


def test_too_few_training_images(tmp_path):
    from worker.core.train import train

    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32)).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match="at least 8 normal images"):
        train([folder], tmp_path / "out", DetectorConfig(image_size=64))
