#!/usr/bin/env bash
# The whole test suite, from nothing: virtual environment, real Kafka/Redis/S3 on loopback, pytest.
# Services the user already runs are used instead when INVAD_TEST_KAFKA / INVAD_TEST_REDIS_URL /
# INVAD_TEST_S3_ENDPOINT are set. Extra arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# Three independent set-ups side by side (each a no-op when cached): Helm for the chart tests (a Go
# build the first time), the services (installed, then started: Kafka's JVM start overlaps the
# virtual environment's install), and the virtual environment.
# Stop at the end only what this run started: a developer's running services stay up.
already=$(scripts/services.sh status 2>/dev/null | grep -c ': running' || true)
if [ "$already" -eq 0 ]; then trap 'scripts/services.sh stop || true' EXIT; fi
setup_logs=$(mktemp -d)
scripts/tools.sh >"$setup_logs/tools" 2>&1 & tools_pid=$!
{ scripts/services.sh install && scripts/services.sh start; } >"$setup_logs/services" 2>&1 & services_pid=$!
python=$(scripts/setup_venv.sh | tail -n 1)
wait "$services_pid" || { cat "$setup_logs/services" >&2; echo "test.sh: installing or starting the services failed" >&2; exit 1; }
grep '^\[services\]' "$setup_logs/services" || true
wait "$tools_pid" || { cat "$setup_logs/tools" >&2; echo "test.sh: building helm failed" >&2; exit 1; }
INVAD_HELM=$(tail -n 1 "$setup_logs/tools")
export INVAD_HELM
# shellcheck disable=SC1090
source "${INVAD_RUN_DIR:-${INVAD_CACHE:-$HOME/.cache/invad}/run}/services.env"
export INVAD_REQUIRE_SERVICES=1  # a missing service is a failure here, never a skip
# Three pytest processes, a file each at a time (--dist loadfile: a file's tests share fixtures and
# private servers): most tests wait on worker processes and services (pytest used 1.3 of 2 cores
# with two), so three streams overlap well even on 2 cores. INVAD_TEST_PROCESSES=0 runs in one
# process (e.g. to debug with -s). The 15 slowest tests are listed at the end.
processes=${INVAD_TEST_PROCESSES:-3}
# One torch thread per process: three pytest processes and the workers they start share 2 cores, and
# more threads than cores only spin against each other.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "$processes" -gt 0 ]; then set -- -n "$processes" --dist loadfile "$@"; fi
"$python" -m pytest --durations=15 "$@"
