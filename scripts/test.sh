#!/usr/bin/env bash
# The whole test suite, from nothing: virtual environment, real Kafka/Redis/S3 on loopback, pytest.
# Services the user already runs are used instead when INVAD_TEST_KAFKA / INVAD_TEST_REDIS_URL /
# INVAD_TEST_S3_ENDPOINT are set. Extra arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# Three independent set-ups side by side (each a no-op when cached): Helm for the chart tests (a Go
# build the first time), the service binaries, and the virtual environment.
setup_logs=$(mktemp -d)
scripts/tools.sh >"$setup_logs/tools" 2>&1 & tools_pid=$!
scripts/services.sh install >"$setup_logs/services" 2>&1 & services_pid=$!
python=$(scripts/setup_venv.sh | tail -n 1)
wait "$services_pid" || { cat "$setup_logs/services" >&2; echo "test.sh: installing the services failed" >&2; exit 1; }
wait "$tools_pid" || { cat "$setup_logs/tools" >&2; echo "test.sh: building helm failed" >&2; exit 1; }
INVAD_HELM=$(tail -n 1 "$setup_logs/tools")
export INVAD_HELM
# Stop at the end only what this run started: a developer's running services stay up.
already=$(scripts/services.sh status | grep -c ': running' || true)
scripts/services.sh start
if [ "$already" -eq 0 ]; then trap 'scripts/services.sh stop' EXIT; fi
# shellcheck disable=SC1090
source "${INVAD_RUN_DIR:-${INVAD_CACHE:-$HOME/.cache/invad}/run}/services.env"
export INVAD_REQUIRE_SERVICES=1  # a missing service is a failure here, never a skip
# Three pytest processes, a file each at a time (--dist loadfile: a file's tests share fixtures and
# private servers): most tests wait on worker processes and services (pytest used 1.3 of 2 cores
# with two), so three streams overlap well even on 2 cores. INVAD_TEST_PROCESSES=0 runs in one
# process (e.g. to debug with -s). The 15 slowest tests are listed at the end.
processes=${INVAD_TEST_PROCESSES:-3}
if [ "$processes" -gt 0 ]; then set -- -n "$processes" --dist loadfile "$@"; fi
"$python" -m pytest --durations=15 "$@"
