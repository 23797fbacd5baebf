"""``invad models``: publish bundles to S3, and activate, roll back and list the version each product serves.

    invad models publish BUNDLE --product P [--version V] [--smoke FOLDER]
    invad models activate P V
    invad models rollback P
    invad models list [P] [--json]

Workers with INVAD_MODEL_POINTERS switch to an activated version within INVAD_MODEL_WATCH_S, once it
has passed their checks (docs/OPERATIONS.md, section 6). Settings come from the same flags and variables as
``invad work`` (INVAD_REDIS_URL, INVAD_REDIS_PREFIX, INVAD_S3_ENDPOINT, INVAD_MODEL_BUCKET or
INVAD_S3_BUCKET, INVAD_S3_PREFIX, AWS_*). Exit codes: 0 done; 2 bad input (a name, a bundle, a version
that is not published or already published with other files, nothing to roll back); 3 Redis and
4 S3 unreachable or refusing (:data:`~worker.pipeline.errors.EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from types import SimpleNamespace
from typing import Any

from worker.common import redis_client, s3client
from worker.common.cliargs import UsageError, positive_int

from .config import add_config_arguments, read_settings
from .errors import EXIT_CODES, DependencyDown, Misconfigured
from .model_pointers import Pointer, PointerStore
from .model_store import ModelStore, Refused, check_name, prepare, who

SETTINGS = (*redis_client.SETTINGS, "redis_prefix", "s3_endpoint", "s3_bucket", "model_bucket", "s3_prefix", "s3_region",
            "aws_access_key_id", "aws_secret_access_key", "aws_session_token")
DEFAULT_SMOKE_COUNT = 16


def _name(kind: str):
    def parse(text: str) -> str:
        try:
            return check_name(kind, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``invad models`` subcommands, each with the Redis and S3 settings it may need."""
    common = argparse.ArgumentParser(add_help=False)
    add_config_arguments(common, SETTINGS)
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("publish", parents=[common], help="upload a bundle and its smoke images as a new version")
    p.add_argument("bundle", help="bundle folder (as `invad train --out` writes it)")
    p.add_argument("--product", required=True, type=_name("product"), help="product key the version serves")
    p.add_argument("--version", type=_name("version"), default=None,
                   help="version name, e.g. 2025.06.1 (default: the bundle's content hash)")
    p.add_argument("--smoke", default=None, help="folder of normal images of the product, scored by every worker "
                   "before it switches (default: BUNDLE/smoke)")
    p.add_argument("--smoke-count", type=positive_int, default=DEFAULT_SMOKE_COUNT,
                   help=f"smoke images to publish, evenly spaced in name order (default {DEFAULT_SMOKE_COUNT})")
    p = sub.add_parser("activate", parents=[common], help="make a published version the one workers serve")
    p.add_argument("product", type=_name("product"))
    p.add_argument("version", type=_name("version"))
    p = sub.add_parser("rollback", parents=[common], help="return to the version active before the current one")
    p.add_argument("product", type=_name("product"))
    p = sub.add_parser("list", parents=[common], help="published versions and the active one")
    p.add_argument("product", nargs="?", type=_name("product"), default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``invad models``; returns the exit code."""
    name = f"invad models {args.action}"
    try:
        settings = read_settings(SETTINGS, args, os.environ)
        result = ACTIONS[args.action](args, settings)
    except (DependencyDown, Misconfigured) as error:
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_CODES["redis" if error.dependency == "redis" else "s3"]
    except s3client.S3_ERRORS as error:
        code = s3client.error_code(error)
        print(f"{name}: S3 failed ({code or type(error).__name__}: {error}); check INVAD_S3_ENDPOINT, the bucket "
              "(INVAD_MODEL_BUCKET or INVAD_S3_BUCKET) and the AWS_* credentials", file=sys.stderr)
        return EXIT_CODES["s3"]
    except (ValueError, Refused) as error:  # UsageError, BundleError, VersionConflict, NothingToRollBack, ...
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_CODES["config"]
    if isinstance(result, str):
        print(result, end="")
    else:
        print(json.dumps(result, indent=1))
    return 0


def _store(settings: SimpleNamespace, action: str) -> ModelStore:
    bucket = settings.model_bucket or settings.s3_bucket
    if not bucket:
        raise UsageError(f"`invad models {action}` needs the bucket of published bundles: set INVAD_MODEL_BUCKET "
                         "(or INVAD_S3_BUCKET), or --model-bucket")
    client = s3client.make_client(endpoint=settings.s3_endpoint, region=settings.s3_region,
                                  access_key=settings.aws_access_key_id,
                                  secret_key=settings.aws_secret_access_key,
                                  session_token=settings.aws_session_token)
    return ModelStore(client, bucket, settings.s3_prefix)


def _pointers(settings: SimpleNamespace, action: str) -> PointerStore:
    if not settings.redis_url:
        raise UsageError(f"`invad models {action}` needs the Redis the workers read: set INVAD_REDIS_URL "
                         "(or --redis-url)")
    return PointerStore.from_settings(settings)


def _publish(args: argparse.Namespace, settings: SimpleNamespace) -> dict[str, Any]:
    store = _store(settings, "publish")
    manifest, files = prepare(args.bundle, args.product, args.version, args.smoke, args.smoke_count)
    try:
        uploaded = store.publish(manifest, files)
    except s3client.S3_ERRORS as error:
        if s3client.error_code(error) == "NoSuchBucket":
            raise UsageError(f"bucket {store.bucket!r} does not exist: create it or set INVAD_MODEL_BUCKET") from error
        raise
    return {"product": manifest.product, "version": manifest.version, "bundle_version": manifest.bundle_version,
            "uploaded": uploaded, "files": len(files), "smoke_images": len(manifest.smoke_files()),
            "location": f"s3://{store.bucket}/{store.key(manifest.product, manifest.version)}",
            "next": f"invad models activate {manifest.product} {manifest.version}"}


def _activate(args: argparse.Namespace, settings: SimpleNamespace) -> dict[str, Any]:
    store, pointers = _store(settings, "activate"), _pointers(settings, "activate")
    try:
        found = store.read_manifest(args.product, args.version)
        if found is None:
            published = [v for v, m in store.versions(args.product) if m is not None]
            raise UsageError(f"{args.product}/{args.version} is not published (published: {published or 'none'}); "
                             "`invad models publish` it first")
        manifest, sha = found
        pointer = Pointer.now(args.product, args.version, store.bucket, store.key(args.product, args.version), sha,
                              who())
        previous = pointers.activate(pointer)
    finally:
        pointers.close()
    return {"product": args.product, "version": args.version, "bundle_version": manifest.bundle_version,
            "previous": previous.version if previous else None, "unchanged": pointer.same_target(previous),
            "location": pointer.location}


def _rollback(args: argparse.Namespace, settings: SimpleNamespace) -> dict[str, Any]:
    pointers = _pointers(settings, "rollback")
    try:
        current, target = pointers.rollback(args.product, who())
    finally:
        pointers.close()
    return {"product": args.product, "from": current.version, "to": target.version, "location": target.location}


def _list(args: argparse.Namespace, settings: SimpleNamespace) -> dict[str, Any] | str:
    store, pointers = _store(settings, "list"), _pointers(settings, "list")
    try:
        products = [args.product] if args.product else store.products()
        rows = []
        for product in products:
            active = pointers.active(product)
            for version, manifest in store.versions(product):
                is_active = active is not None and (active.bucket, active.manifest_key) == \
                    (store.bucket, store.key(product, version))
                rows.append({"product": product, "version": version, "active": is_active,
                             "bundle_version": manifest.bundle_version if manifest else None,
                             "model_name": manifest.model_name if manifest else None,
                             "published_at": manifest.published_at if manifest else None,
                             "published_by": manifest.published_by if manifest else None,
                             "complete": manifest is not None})
            if active is not None and not any(r["active"] for r in rows if r["product"] == product):
                rows.append({"product": product, "version": active.version, "active": True, "bundle_version": None,
                             "model_name": None, "published_at": None, "published_by": None, "complete": False})
    finally:
        pointers.close()
    if args.product and not rows:
        raise UsageError(f"product {args.product!r} has no published version; `invad models publish` one")
    if args.json:
        return {"versions": rows}
    return _table(rows)


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("PRODUCT", "VERSION", "ACTIVE", "BUNDLE", "MODEL", "PUBLISHED", "BY")
    lines = [header] + [(r["product"], r["version"], "*" if r["active"] else "", r["bundle_version"] or "-",
                         r["model_name"] or ("-" if r["complete"] else "(incomplete)"), r["published_at"] or "-",
                         r["published_by"] or "-") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n" for line in lines)


ACTIONS = {"publish": _publish, "activate": _activate, "rollback": _rollback, "list": _list}
