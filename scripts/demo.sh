#!/usr/bin/env bash
# The main job on the embedded default: real solar-cell images (ELPV, from PyPI), a small model
# trained (or reused), the embedded streaming pipeline (no Kafka, Redis or S3), and a summary.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=$("$repo/scripts/setup_venv.sh" | tail -n 1)
exec "$python" -m worker.cli demo "$@"
