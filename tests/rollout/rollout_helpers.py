"""Helpers of the model roll-out tests: a test's bucket and Redis prefix, and `invad` run in-process."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


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
