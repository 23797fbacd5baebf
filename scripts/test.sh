#!/usr/bin/env bash
# The whole test suite, from nothing: virtual environment, real Kafka/Redis/S3 on loopback, pytest.
# Services the user already runs are used instead when INVAD_TEST_KAFKA / INVAD_TEST_REDIS_URL /
# INVAD_TEST_S3_ENDPOINT are set. Extra arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=$(scripts/setup_venv.sh | tail -n 1)
scripts/services.sh install
# Stop at the end only what this run started: a developer's running services stay up.
already=$(scripts/services.sh status | grep -c ': running' || true)
scripts/services.sh start
if [ "$already" -eq 0 ]; then trap 'scripts/services.sh stop' EXIT; fi
# shellcheck disable=SC1090
source "${INVAD_RUN_DIR:-${INVAD_CACHE:-$HOME/.cache/invad}/run}/services.env"
export INVAD_REQUIRE_SERVICES=1  # a missing service is a failure here, never a skip
"$python" -m pytest "$@"
