"""`invad models publish/activate/rollback/list` against the real Redis and S3, with real bundles."""

from __future__ import annotations

import hashlib
import json

import pytest

from rollout_helpers import invad

pytestmark = pytest.mark.services


def test_publish_activate_list_and_rollback(model_env, tiny_bundle, bundle_v2, smoke_dir, capsys):
    code, v1 = invad("models", "publish", str(tiny_bundle), "--product", "bottle", "--version", "v1",
                     "--smoke", str(smoke_dir), "--smoke-count", "4", capsys=capsys)
    assert code == 0 and v1["uploaded"] and v1["smoke_images"] == 4 and v1["version"] == "v1"
    client = model_env.s3_client()
    manifest = json.loads(client.get_object(Bucket=model_env.bucket, Key=model_env.key("bottle", "v1"))["Body"].read())
    assert manifest["bundle_version"] == v1["bundle_version"] and len(manifest["files"]) == v1["files"]
    for name, entry in manifest["files"].items():  # every file is there, with the bytes the manifest says
        body = client.get_object(Bucket=model_env.bucket, Key=model_env.key("bottle", "v1", name))["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] and len(body) == entry["size"]
    assert sum(name.startswith("smoke/") for name in manifest["files"]) == 4

    # The same files again: nothing to do. Other files under a published version: refused.
    code, again = invad("models", "publish", str(tiny_bundle), "--product", "bottle", "--version", "v1",
                        "--smoke", str(smoke_dir), "--smoke-count", "4", capsys=capsys)
    assert code == 0 and not again["uploaded"]
    code, text = invad("models", "publish", str(bundle_v2), "--product", "bottle", "--version", "v1",
                       "--smoke", str(smoke_dir), "--smoke-count", "4", capsys=capsys)
    assert code == 2 and "already published with other files" in text and "new --version" in text
    code, v2 = invad("models", "publish", str(bundle_v2), "--product", "bottle", "--version", "v2",
                     "--smoke", str(smoke_dir), "--smoke-count", "4", capsys=capsys)
    assert code == 0 and v2["bundle_version"] != v1["bundle_version"]
    code, hashed = invad("models", "publish", str(bundle_v2), "--product", "bottle", "--smoke", str(smoke_dir),
                         "--smoke-count", "2", capsys=capsys)
    assert code == 0 and hashed["version"] == v2["bundle_version"]  # default version: the bundle's content hash

    code, first = invad("models", "activate", "bottle", "v1", capsys=capsys)
    assert code == 0 and first["previous"] is None
    code, second = invad("models", "activate", "bottle", "v2", capsys=capsys)
    assert code == 0 and second["previous"] == "v1" and not second["unchanged"]
    code, same = invad("models", "activate", "bottle", "v2", capsys=capsys)
    assert code == 0 and same["unchanged"]
    pointer = json.loads(model_env.redis().get(f"{model_env.prefix}:model:bottle:active"))
    raw = client.get_object(Bucket=model_env.bucket, Key=model_env.key("bottle", "v2"))["Body"].read()
    assert pointer["version"] == "v2" and pointer["manifest_sha256"] == hashlib.sha256(raw).hexdigest()
    assert pointer["bucket"] == model_env.bucket and pointer["manifest_key"] == model_env.key("bottle", "v2")

    code, listed = invad("models", "list", "bottle", "--json", capsys=capsys)
    rows = {row["version"]: row for row in listed["versions"]}
    assert code == 0 and set(rows) == {"v1", "v2", v2["bundle_version"]}
    assert [v for v, row in rows.items() if row["active"]] == ["v2"]
    assert rows["v1"]["bundle_version"] == v1["bundle_version"] and rows["v1"]["model_name"] == "tiny"
    code, table = invad("models", "list", capsys=capsys)
    lines = table.splitlines()
    assert code == 0 and lines[0].split() == ["PRODUCT", "VERSION", "ACTIVE", "BUNDLE", "MODEL", "PUBLISHED", "BY"]
    assert any(line.split()[:3] == ["bottle", "v2", "*"] for line in lines[1:])

    code, back = invad("models", "rollback", "bottle", capsys=capsys)
    assert code == 0 and (back["from"], back["to"]) == ("v2", "v1")
    assert json.loads(model_env.redis().get(f"{model_env.prefix}:model:bottle:active"))["version"] == "v1"
    code, text = invad("models", "rollback", "bottle", capsys=capsys)
    assert code == 2 and "no version before v1" in text
    code, again = invad("models", "activate", "bottle", "v2", capsys=capsys)  # forward again, then back again
    code, back = invad("models", "rollback", "bottle", capsys=capsys)
    assert code == 0 and (back["from"], back["to"]) == ("v2", "v1")


def test_bad_input_is_named_with_its_fix(model_env, tiny_bundle, smoke_dir, tmp_path, capsys, monkeypatch):
    publish = ("models", "publish", str(tiny_bundle), "--product", "bottle", "--smoke", str(smoke_dir))
    code, text = invad("models", "publish", str(tmp_path / "nothing"), "--product", "bottle", capsys=capsys)
    assert code == 2 and "does not exist" in text
    code, text = invad("models", "publish", str(tiny_bundle), "--product", "bottle", capsys=capsys)
    assert code == 2 and "no smoke images" in text and "--smoke" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = invad("models", "publish", str(tiny_bundle), "--product", "bottle", "--smoke", str(empty),
                       capsys=capsys)
    assert code == 2 and "holds no image files" in text
    for argv, expected in ((("models", "publish", str(tiny_bundle), "--product", "no spaces"),
                            "product 'no spaces' is not allowed"),
                           (("models", "activate", "bottle", "../v1"), "version '../v1' is not allowed"),
                           (("models", "activate", "bottle"), "the following arguments are required: version"),
                           ((*publish, "--smoke-count", "0"), "not a positive integer")):
        with pytest.raises(SystemExit) as exited:
            invad(*argv, capsys=capsys)
        assert exited.value.code == 2 and expected in capsys.readouterr().err

    code, text = invad("models", "activate", "bottle", "v9", capsys=capsys)
    assert code == 2 and "bottle/v9 is not published" in text
    code, text = invad("models", "rollback", "bottle", capsys=capsys)
    assert code == 2 and "no active version" in text

    monkeypatch.delenv("INVAD_MODEL_BUCKET")
    code, text = invad(*publish, capsys=capsys)
    assert code == 2 and "INVAD_MODEL_BUCKET" in text
    monkeypatch.setenv("INVAD_S3_BUCKET", "no-such-bucket-" + model_env.prefix.lower()[:20])
    code, text = invad(*publish, capsys=capsys)
    assert code == 2 and "does not exist" in text
    monkeypatch.setenv("INVAD_S3_BUCKET", model_env.bucket)
    code, text = invad("models", "activate", "bottle", "v1", "--redis-url", "nope://x", capsys=capsys)
    assert code == 2 and "--redis-url='nope://x'" in text
    monkeypatch.delenv("INVAD_REDIS_URL")
    code, text = invad("models", "rollback", "bottle", capsys=capsys)
    assert code == 2 and "INVAD_REDIS_URL" in text
    code, text = invad("models", "rollback", "bottle", "--redis-url", "redis://127.0.0.1:1/0", capsys=capsys)
    assert code == 3 and "redis unavailable" in text
    code, text = invad(*publish, "--s3-endpoint", "http://127.0.0.1:1", capsys=capsys)
    assert code == 4 and "S3 failed" in text
