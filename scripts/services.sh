#!/usr/bin/env bash
# Real test services on loopback: Kafka (KRaft, from Maven Central), Redis (Debian redis-server),
# S3 (SeaweedFS `weed server -s3`, built from its Go module).
#
#   scripts/services.sh install   fetch/build what is missing into the cache (idempotent)
#   scripts/services.sh start     start what is not running, wait until ready, write the env file
#   scripts/services.sh stop      stop what `start` started (caches and Kafka's formatted log dir stay;
#                                 SeaweedFS starts from an empty store each time unless INVAD_S3_KEEP_DATA=1)
#   scripts/services.sh status    one line per service
#   scripts/services.sh env       print the env file (`eval "$(scripts/services.sh env)"` to load it)
#
# Cache:      ${INVAD_CACHE:-$HOME/.cache/invad}   (kafka-<v>/libs, bin/weed, m2/)
# Run state:  ${INVAD_RUN_DIR:-$INVAD_CACHE/run}   (pids, data, logs, services.env)
# Ports:      INVAD_KAFKA_PORT (19092), INVAD_REDIS_PORT (16379), INVAD_S3_PORT (18333)
# A service whose INVAD_TEST_KAFKA / INVAD_TEST_REDIS_URL / INVAD_TEST_S3_ENDPOINT is already set is
# not started; the given value is passed through into services.env.
set -euo pipefail

INVAD_CACHE="${INVAD_CACHE:-$HOME/.cache/invad}"
RUN_DIR="${INVAD_RUN_DIR:-$INVAD_CACHE/run}"
LOG_DIR="$RUN_DIR/logs"
ENV_FILE="$RUN_DIR/services.env"

KAFKA_VERSIONS="${INVAD_KAFKA_VERSION:-4.4.0 4.3.1}"   # first one that resolves wins
SLF4J_BINDING="org.apache.logging.log4j:log4j-slf4j-impl:2.25.5"  # Kafka 4.x ships slf4j-api 1.7.x
WEED_MODULE="github.com/seaweedfs/seaweedfs"
WEED_VERSION="${INVAD_SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"

KAFKA_PORT="${INVAD_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${INVAD_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
REDIS_PORT="${INVAD_REDIS_PORT:-16379}"
S3_PORT="${INVAD_S3_PORT:-18333}"
# SeaweedFS internal ports, derived from the S3 port so that overriding it moves them all
WEED_MASTER_PORT="$((S3_PORT + 1000))"   # 19333
WEED_VOLUME_PORT="$((S3_PORT - 253))"    # 18080
WEED_FILER_PORT="$((S3_PORT + 555))"     # 18888
S3_ACCESS_KEY_DEFAULT="invad-test-access"
S3_SECRET_KEY_DEFAULT="invad-test-secret-key"

KAFKA_START_TIMEOUT="${INVAD_KAFKA_START_TIMEOUT:-90}"
REDIS_START_TIMEOUT=15
S3_START_TIMEOUT="${INVAD_S3_START_TIMEOUT:-60}"

GO_BIN="$(command -v go || true)"
[[ -n "$GO_BIN" ]] || GO_BIN=/usr/local/go/bin/go

log() { echo "[services] $*" >&2; }
die() { echo "[services] ERROR: $*" >&2; exit 1; }
now() { date +%s; }

show_log() { # $1 = file
  if [[ -f "$1" ]]; then
    echo "----- last 30 lines of $1 -----" >&2
    tail -n 30 "$1" >&2 || true
    echo "----- end of $1 -----" >&2
  else
    echo "(no log file at $1)" >&2
  fi
}

port_open() { # $1 = port; true when something accepts TCP on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pid_alive() { # $1 = pid file, $2 = expected word in the command line
  local pidf="$1" pid
  [[ -f "$pidf" ]] || return 1
  pid="$(cat "$pidf" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

install_redis() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    log "redis: redis-server already installed ($(command -v redis-server))"
    return
  fi
  local sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  log "redis: installing Debian package redis-server"
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q redis-server >/dev/null 2>&1; then
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q redis-server >/dev/null || die "redis: apt-get install redis-server failed"
  fi
  # Debian's package starts a system-wide instance on 6379; ours runs on its own port, leave it be.
  command -v redis-server >/dev/null || die "redis: redis-server still not on PATH after install"
}

kafka_home() { # prints the first fully installed Kafka folder, or nothing
  local v
  for v in $KAFKA_VERSIONS; do
    if [[ -f "$INVAD_CACHE/kafka-$v/libs/.complete" ]]; then
      echo "$INVAD_CACHE/kafka-$v"
      return
    fi
  done
}

install_kafka() {
  local home
  home="$(kafka_home)"
  if [[ -n "$home" ]]; then
    log "kafka: already installed ($home)"
    return
  fi
  command -v mvn >/dev/null || die "kafka: mvn (Maven) not found; apt-get install -y maven"
  command -v java >/dev/null || die "kafka: java not found; a Java 17 runtime is needed"
  local v t0 work
  for v in $KAFKA_VERSIONS; do
    t0=$(now)
    log "kafka: fetching org.apache.kafka:kafka_2.13:$v and its runtime dependencies from Maven Central"
    work="$INVAD_CACHE/kafka-$v"
    rm -rf "$work.tmp"
    mkdir -p "$work.tmp"
    cat >"$work.tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>invad</groupId>
  <artifactId>kafka-test-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$v</version></dependency>
    <!-- kafka-tools: kafka-topics, BrokerApiVersionsCommand etc. (without Connect's web stack) -->
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$v</version>
      <exclusions><exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion></exclusions>
    </dependency>
    <dependency>
      <groupId>${SLF4J_BINDING%%:*}</groupId>
      <artifactId>$(cut -d: -f2 <<<"$SLF4J_BINDING")</artifactId>
      <version>${SLF4J_BINDING##*:}</version>
    </dependency>
  </dependencies>
</project>
EOF
    if (cd "$work.tmp" && mvn -B -q -Dmaven.repo.local="$INVAD_CACHE/m2" \
          dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$work.tmp/libs" \
          >"$work.tmp/mvn.log" 2>&1) && [[ -f "$work.tmp/libs/kafka_2.13-$v.jar" ]]; then
      touch "$work.tmp/libs/.complete"
      rm -rf "$work"
      mv "$work.tmp" "$work"
      log "kafka: installed $v into $work ($(ls "$work/libs" | wc -l) jars, $(($(now) - t0)) s)"
      return
    fi
    log "kafka: could not resolve Kafka $v (see $work.tmp/mvn.log):"
    tail -n 15 "$work.tmp/mvn.log" >&2 || true
  done
  die "kafka: no Kafka version of [$KAFKA_VERSIONS] could be fetched with Maven"
}

install_weed() {
  local bin="$INVAD_CACHE/bin/weed" stamp="$INVAD_CACHE/bin/weed.version"
  if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$WEED_VERSION" ]]; then
    log "seaweedfs: already built ($bin, $WEED_VERSION)"
    return
  fi
  [[ -x "$GO_BIN" ]] || die "seaweedfs: Go toolchain not found (looked for go on PATH and /usr/local/go/bin/go)"
  mkdir -p "$INVAD_CACHE/bin" "$INVAD_CACHE/tmp"
  local t0 dir src buildlog="$INVAD_CACHE/weed-build.log"
  t0=$(now)
  log "seaweedfs: downloading Go module $WEED_MODULE@$WEED_VERSION"
  dir="$(cd "$INVAD_CACHE/tmp" && GOFLAGS=-mod=mod "$GO_BIN" mod download -json "$WEED_MODULE@$WEED_VERSION" \
          | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" \
    || die "seaweedfs: go mod download $WEED_MODULE@$WEED_VERSION failed"
  [[ -n "$dir" && -d "$dir/weed" ]] || die "seaweedfs: module folder not found after go mod download ($dir)"
  # The module cache is read-only and go.mod has replace directives (so `go install` is refused):
  # build ./weed from a writable copy of the module.
  src="$(mktemp -d "$INVAD_CACHE/tmp/seaweedfs-src.XXXXXX")"
  cp -r "$dir/." "$src/"
  chmod -R u+w "$src"
  log "seaweedfs: building weed with $("$GO_BIN" env GOVERSION) (large; several minutes on 2 cores from a cold Go cache; log: $buildlog)"
  (cd "$src/weed" && GOFLAGS="-mod=mod -buildvcs=false" "$GO_BIN" build -trimpath -ldflags='-s -w' -o "$bin.tmp" . \
      >"$buildlog" 2>&1) &
  local bpid=$! rc=0 ticks=0
  while kill -0 "$bpid" 2>/dev/null; do
    sleep 5
    ticks=$((ticks + 1))
    if ((ticks % 12 == 0)); then log "seaweedfs: still building ($(($(now) - t0)) s)"; fi
  done
  wait "$bpid" || rc=$?
  rm -rf "$src"
  rmdir "$INVAD_CACHE/tmp" 2>/dev/null || true
  if (( rc != 0 )) || ! "$bin.tmp" version >/dev/null 2>&1; then
    show_log "$buildlog"
    die "seaweedfs: build of weed failed (exit $rc); full log: $buildlog"
  fi
  mv "$bin.tmp" "$bin"
  echo "$WEED_VERSION" >"$stamp"
  log "seaweedfs: built $bin ($("$bin" version 2>/dev/null | head -n 1)) in $(($(now) - t0)) s"
}

cmd_install() {
  mkdir -p "$INVAD_CACHE"
  local t0
  t0=$(now); install_redis; log "redis: install step took $(($(now) - t0)) s"
  t0=$(now); install_kafka; log "kafka: install step took $(($(now) - t0)) s"
  t0=$(now); install_weed; log "seaweedfs: install step took $(($(now) - t0)) s"
}

# ---------------------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------------------

launch() { # $1 = name, $2 = log file, rest = command; records the pid in $RUN_DIR/$1.pid
  local name="$1" logf="$2"
  shift 2
  [[ -f "$logf" ]] && mv -f "$logf" "$logf.1"
  nohup setsid "$@" </dev/null >"$logf" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
}

check_port_free() { # $1 = service, $2 = port
  if port_open "$2"; then
    die "$1: port 127.0.0.1:$2 is already in use by another process (not started by this script);" \
        "stop it or choose another port (INVAD_*_PORT)"
  fi
}

fail_start() { # $1 = service, $2 = log, $3 = message
  echo "[services] ERROR: $1 failed to start: $3" >&2
  show_log "$2"
  echo "[services] full log: $2" >&2
  exit 1
}

start_redis() {
  local pidf="$RUN_DIR/redis.pid" logf="$LOG_DIR/redis.log"
  if pid_alive "$pidf" redis-server; then log "redis: already running (pid $(cat "$pidf"))"; return; fi
  command -v redis-server >/dev/null || die "redis: redis-server not installed; run: $0 install"
  check_port_free redis "$REDIS_PORT"
  mkdir -p "$RUN_DIR/redis"
  launch redis "$logf" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
    --daemonize no --dir "$RUN_DIR/redis" --save "" --appendonly no --databases 16
  STARTED+=(redis)
}

wait_redis() {
  local pidf="$RUN_DIR/redis.pid" logf="$LOG_DIR/redis.log" t0
  t0=$(now)
  until [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; do
    pid_alive "$pidf" redis-server || fail_start redis "$logf" "process exited"
    (($(now) - t0 < REDIS_START_TIMEOUT)) || fail_start redis "$logf" "no PONG on 127.0.0.1:$REDIS_PORT after ${REDIS_START_TIMEOUT}s"
    sleep 0.2
  done
}

write_kafka_config() { # $1 = kafka run dir
  local kd="$1"
  cat >"$kd/server.properties" <<EOF
# generated by scripts/services.sh; single-node KRaft test broker on loopback
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$kd/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.segment.bytes=16777216
log.retention.hours=24
EOF
  cat >"$kd/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
# the full config dumps and per-request state changes are noise in test logs
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

start_kafka() {
  local kd="$RUN_DIR/kafka" pidf="$RUN_DIR/kafka.pid" logf="$LOG_DIR/kafka.log" home
  if pid_alive "$pidf" kafka.Kafka; then log "kafka: already running (pid $(cat "$pidf"))"; return; fi
  home="$(kafka_home)"
  [[ -n "$home" ]] || die "kafka: not installed; run: $0 install"
  command -v java >/dev/null || die "kafka: java not found"
  check_port_free kafka "$KAFKA_PORT"
  check_port_free kafka-controller "$KAFKA_CONTROLLER_PORT"
  mkdir -p "$kd"
  write_kafka_config "$kd"
  local stamp="$home|$KAFKA_PORT|$KAFKA_CONTROLLER_PORT"
  if [[ ! -f "$kd/data/meta.properties" || "$(cat "$kd/format.stamp" 2>/dev/null)" != "$stamp" ]]; then
    # first start, or Kafka version / ports changed: (re)format the KRaft storage
    rm -rf "$kd/data"
    local cid
    cid="$(java -cp "$home/libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    [[ -n "$cid" ]] || die "kafka: could not generate a cluster id (kafka.tools.StorageTool random-uuid)"
    if ! java -Xmx256m -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$kd/log4j2.properties" \
         -cp "$home/libs/*" kafka.tools.StorageTool format -t "$cid" -c "$kd/server.properties" --standalone \
         >"$LOG_DIR/kafka-format.log" 2>&1; then
      fail_start kafka "$LOG_DIR/kafka-format.log" "storage format (kafka.tools.StorageTool format) failed"
    fi
    echo "$stamp" >"$kd/format.stamp"
  fi
  launch kafka "$logf" java -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$kd/log4j2.properties" -cp "$home/libs/*" kafka.Kafka "$kd/server.properties"
  STARTED+=(kafka)
}

wait_kafka() {
  local pidf="$RUN_DIR/kafka.pid" logf="$LOG_DIR/kafka.log" t0
  t0=$(now)
  until grep -q "Kafka Server started" "$logf" 2>/dev/null && port_open "$KAFKA_PORT"; do
    pid_alive "$pidf" kafka.Kafka || fail_start kafka "$logf" "process exited"
    (($(now) - t0 < KAFKA_START_TIMEOUT)) || fail_start kafka "$logf" "not ready on 127.0.0.1:$KAFKA_PORT after ${KAFKA_START_TIMEOUT}s"
    sleep 0.3
  done
}

start_s3() {
  local wd="$RUN_DIR/seaweedfs" pidf="$RUN_DIR/seaweedfs.pid" logf="$LOG_DIR/seaweedfs.log"
  local bin="$INVAD_CACHE/bin/weed" p
  if pid_alive "$pidf" weed; then log "seaweedfs: already running (pid $(cat "$pidf"))"; return; fi
  [[ -x "$bin" ]] || die "seaweedfs: $bin not built; run: $0 install"
  for p in "$S3_PORT" "$WEED_MASTER_PORT" "$WEED_VOLUME_PORT" "$WEED_FILER_PORT" \
           $((S3_PORT + 10000)) $((WEED_MASTER_PORT + 10000)) $((WEED_VOLUME_PORT + 10000)) $((WEED_FILER_PORT + 10000)); do
    check_port_free seaweedfs "$p"
  done
  # A fresh store on every start: a master restarted on old data waits for a raft election (~10 s)
  # and then refuses volume growth for a 15 s warm-up; tests never need data from a previous run.
  if [[ "${INVAD_S3_KEEP_DATA:-0}" != 1 ]]; then rm -rf "$wd/data"; fi
  # unix sockets weed puts in /tmp, named by port; a SIGKILLed weed leaves them behind
  rm -f "/tmp/seaweedfs-s3-$S3_PORT.sock" "/tmp/seaweedfs-filer-$WEED_FILER_PORT.sock" \
        "/tmp/seaweedfs-master-grpc-$((WEED_MASTER_PORT + 10000)).sock" \
        "/tmp/seaweedfs-volume-grpc-$((WEED_VOLUME_PORT + 10000)).sock" \
        "/tmp/seaweedfs-filer-grpc-$((WEED_FILER_PORT + 10000)).sock" \
        "/tmp/seaweedfs-s3-grpc-$((S3_PORT + 10000)).sock"
  mkdir -p "$wd/data"
  cat >"$wd/s3.json" <<EOF
{
  "identities": [
    {
      "name": "invad-test",
      "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF
  # `cd` so that anything weed writes relative to the cwd lands in the run dir
  launch seaweedfs "$logf" bash -c 'cd "$1" && shift && exec "$@"' _ "$wd" \
    "$bin" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$wd/data" \
    -master.port="$WEED_MASTER_PORT" -master.port.grpc=$((WEED_MASTER_PORT + 10000)) \
    -master.volumeSizeLimitMB=64 -master.telemetry=false -master.defaultReplication=000 \
    -volume.port="$WEED_VOLUME_PORT" -volume.port.grpc=$((WEED_VOLUME_PORT + 10000)) -volume.max=0 \
    -volume.preStopSeconds=1 \
    -filer -filer.port="$WEED_FILER_PORT" -filer.port.grpc=$((WEED_FILER_PORT + 10000)) \
    -s3 -s3.port="$S3_PORT" -s3.port.grpc=$((S3_PORT + 10000)) -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.config="$wd/s3.json" -s3.autoCreateBucket=false
  STARTED+=(seaweedfs)
}

s3_probe() { # one signed S3 round trip: create bucket, put, get, delete object and bucket
  local sig=(--aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY"
             -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -s -m 5 -o /dev/null -w '%{http_code}')
  local url="http://127.0.0.1:$S3_PORT/invad-readiness-probe"
  [[ "$(curl "${sig[@]}" -X PUT "$url")" =~ ^(200|409)$ ]] || return 1
  [[ "$(curl "${sig[@]}" -X PUT --data-binary ready "$url/probe")" == 200 ]] || return 1
  [[ "$(curl "${sig[@]}" "$url/probe")" == 200 ]] || return 1
  curl "${sig[@]}" -X DELETE "$url/probe" >/dev/null || true
  curl "${sig[@]}" -X DELETE "$url" >/dev/null || true
}

wait_s3() {
  local pidf="$RUN_DIR/seaweedfs.pid" logf="$LOG_DIR/seaweedfs.log" t0 code
  t0=$(now)
  # 1) the S3 port answers HTTP; 2) a signed write goes through: the filer has registered with the
  # master (S3 writes take a filer lock) and the master grows volumes (first ~8-10 s after boot)
  while :; do
    pid_alive "$pidf" weed || fail_start seaweedfs "$logf" "process exited"
    (($(now) - t0 < S3_START_TIMEOUT)) || fail_start seaweedfs "$logf" \
      "S3 gateway on 127.0.0.1:$S3_PORT not answering a signed PUT/GET after ${S3_START_TIMEOUT}s"
    code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$S3_PORT/" 2>/dev/null || true)"
    if [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && s3_probe; then
      break
    fi
    sleep 0.5
  done
}

write_env() {
  local tmp="$ENV_FILE.tmp"
  {
    echo "# written by scripts/services.sh start; source this file"
    echo "export INVAD_TEST_KAFKA=${INVAD_TEST_KAFKA:-127.0.0.1:$KAFKA_PORT}"
    echo "export INVAD_TEST_REDIS_URL=${INVAD_TEST_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
    echo "export INVAD_TEST_S3_ENDPOINT=${INVAD_TEST_S3_ENDPOINT:-http://127.0.0.1:$S3_PORT}"
    echo "export INVAD_TEST_S3_ACCESS_KEY=$S3_ACCESS_KEY"
    echo "export INVAD_TEST_S3_SECRET_KEY=$S3_SECRET_KEY"
    echo "export INVAD_TEST_S3_REGION=$S3_REGION"
  } >"$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

cmd_start() {
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  S3_ACCESS_KEY="${INVAD_TEST_S3_ACCESS_KEY:-$S3_ACCESS_KEY_DEFAULT}"
  S3_SECRET_KEY="${INVAD_TEST_S3_SECRET_KEY:-$S3_SECRET_KEY_DEFAULT}"
  S3_REGION="${INVAD_TEST_S3_REGION:-us-east-1}"
  STARTED=()
  local t0
  t0=$(now)
  # launch everything first, then wait: the three boot in parallel
  if [[ -n "${INVAD_TEST_REDIS_URL:-}" ]]; then log "redis: using INVAD_TEST_REDIS_URL=$INVAD_TEST_REDIS_URL"; else start_redis; fi
  if [[ -n "${INVAD_TEST_KAFKA:-}" ]]; then log "kafka: using INVAD_TEST_KAFKA=$INVAD_TEST_KAFKA"; else start_kafka; fi
  if [[ -n "${INVAD_TEST_S3_ENDPOINT:-}" ]]; then log "seaweedfs: using INVAD_TEST_S3_ENDPOINT=$INVAD_TEST_S3_ENDPOINT"; else start_s3; fi
  local s
  for s in "${STARTED[@]}"; do
    case "$s" in
      redis) wait_redis; log "redis: ready on 127.0.0.1:$REDIS_PORT (pid $(cat "$RUN_DIR/redis.pid"), $(($(now) - t0)) s)" ;;
      kafka) wait_kafka; log "kafka: ready on 127.0.0.1:$KAFKA_PORT (pid $(cat "$RUN_DIR/kafka.pid"), $(($(now) - t0)) s)" ;;
      seaweedfs) wait_s3; log "seaweedfs: S3 ready on 127.0.0.1:$S3_PORT (pid $(cat "$RUN_DIR/seaweedfs.pid"), $(($(now) - t0)) s)" ;;
    esac
  done
  write_env
  log "env file: $ENV_FILE"
}

# ---------------------------------------------------------------------------------------------
# stop / status / env
# ---------------------------------------------------------------------------------------------

stop_one() { # $1 = name, $2 = expected word in its command line, $3 = grace seconds before SIGKILL
  local name="$1" pidf="$RUN_DIR/$1.pid" grace="$3" pid i
  if ! pid_alive "$pidf" "$2"; then
    rm -f "$pidf"
    log "$name: not running"
    return
  fi
  pid="$(cat "$pidf")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: no exit within ${grace} s of SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidf"
  log "$name: stopped (pid $pid)"
}

cmd_stop() {
  # SeaweedFS's own shutdown takes ~18 s (its filer retries a metadata flush after the volume server
  # is gone); its data is wiped on the next start anyway, so it only gets a short grace period.
  local weed_grace=5
  [[ "${INVAD_S3_KEEP_DATA:-0}" != 1 ]] || weed_grace=30
  stop_one seaweedfs weed "$weed_grace" &
  stop_one kafka kafka.Kafka 30 &
  stop_one redis redis-server 10 &
  wait
  rm -f "$ENV_FILE"
}

cmd_status() {
  local line
  status_line() { # $1 name, $2 word, $3 env var name, $4 address
    local ext="${!3:-}"
    if [[ -n "$ext" ]]; then
      echo "$1: external ($3=$ext)"
    elif pid_alive "$RUN_DIR/$1.pid" "$2"; then
      echo "$1: running (pid $(cat "$RUN_DIR/$1.pid")) on $4, log $LOG_DIR/$1.log"
    else
      echo "$1: stopped"
    fi
  }
  status_line kafka kafka.Kafka INVAD_TEST_KAFKA "127.0.0.1:$KAFKA_PORT"
  status_line redis redis-server INVAD_TEST_REDIS_URL "127.0.0.1:$REDIS_PORT"
  status_line seaweedfs weed INVAD_TEST_S3_ENDPOINT "127.0.0.1:$S3_PORT (S3)"
}

cmd_env() {
  [[ -f "$ENV_FILE" ]] || die "no env file at $ENV_FILE; run: $0 start"
  cat "$ENV_FILE"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
