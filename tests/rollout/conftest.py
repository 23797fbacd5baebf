"""Model roll-out fixtures: real bundles (the tiny one, a second version of it, a corrupt copy), smoke
images, and a private bucket and Redis prefix on the shared services with `invad models` pointed at them."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "pipeline"))  # helpers, kafka_helpers

from helpers import unique  # noqa: E402


@dataclass
class ModelEnv:
    """One test's bucket and Redis prefix, and the variables `invad models` and a worker read."""
    redis_url: str
    s3: dict[str, str]
    bucket: str
    prefix: str

    def environ(self) -> dict[str, str]:
        return {"INVAD_REDIS_URL": self.redis_url, "INVAD_REDIS_PREFIX": self.prefix,
                "INVAD_S3_ENDPOINT": self.s3["endpoint"], "INVAD_MODEL_BUCKET": self.bucket, "INVAD_S3_PREFIX": "art",
                "AWS_ACCESS_KEY_ID": self.s3["access_key"], "AWS_SECRET_ACCESS_KEY": self.s3["secret_key"],
                "AWS_REGION": self.s3["region"]}

    def s3_client(self) -> Any:
        from worker.common import s3client
        return s3client.make_client(endpoint=self.s3["endpoint"], region=self.s3["region"],
                                    access_key=self.s3["access_key"], secret_key=self.s3["secret_key"], timeout_s=5)

    def redis(self) -> Any:
        import redis
        return redis.Redis.from_url(self.redis_url)

    def key(self, product: str, version: str, name: str = "manifest.json") -> str:
        return f"art/_models/{product}/{version}/{name}"


def invad(*argv: str, capsys) -> tuple[int, Any]:
    """Run `invad ARGV` in this process: (exit code, the JSON object it printed, else all it printed).
    The JSON is found by its own lines ("{" ... "}"): a worker thread may log to stdout meanwhile."""
    from worker.cli import main
    code = main(list(argv))
    out = capsys.readouterr()
    lines = out.out.splitlines()
    if "{" in lines:
        start = len(lines) - 1 - lines[::-1].index("{")
        if "}" in lines[start:]:
            return code, json.loads("\n".join(lines[start:lines.index("}", start) + 1]))
    return code, out.out + out.err


@pytest.fixture
def model_env(redis_url, s3_settings, monkeypatch) -> ModelEnv:
    env = ModelEnv(redis_url, s3_settings, unique("models").lower(), unique("p"))
    env.s3_client().create_bucket(Bucket=env.bucket)
    for name, value in env.environ().items():
        monkeypatch.setenv(name, value)
    for name in ("INVAD_S3_BUCKET", "INVAD_MODEL_POINTERS"):
        monkeypatch.delenv(name, raising=False)
    return env


@pytest.fixture(scope="session")
def smoke_dir(texture_category) -> Path:
    """Held-out normal images of the tiny bundle's product (its category's test/good)."""
    return texture_category / "test" / "good"


@pytest.fixture(scope="session")
def bundle_v2(tiny_bundle, tmp_path_factory) -> Path:
    """A second version of the tiny bundle: its thresholds raised by 0.5 (other weights file, other hash)."""
    from worker.core.detector import Detector
    detector = Detector.from_pretrained(tiny_bundle, "cpu")
    detector.thresholds += 0.5
    out = tmp_path_factory.mktemp("bundles") / "tiny_v2"
    detector.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def corrupt_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle with every byte of its detector tensors flipped: the files still parse (a
    safetensors header carries no checksum), the weights are garbage."""
    out = tmp_path_factory.mktemp("bundles") / "tiny_corrupt"
    shutil.copytree(tiny_bundle, out)
    path = out / "detector.safetensors"
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # u64 header length, then the JSON header, then the data
    raw[start:] = bytes(b ^ 0xFF for b in raw[start:])
    path.write_bytes(bytes(raw))
    return out
