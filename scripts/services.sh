#!/usr/bin/env bash
# Real test services on loopback: Kafka (KRaft) and S3 (s3proxy, filesystem backend), both fetched from
# Maven Central, and Redis (Debian redis-server).
#
#   scripts/services.sh install   fetch what is missing into the cache (idempotent; a few tens of seconds)
#   scripts/services.sh start     start what is not running, wait until ready, write the env file
#   scripts/services.sh stop      stop what `start` started (caches and Kafka's formatted log dir stay;
#                                 s3proxy starts from an empty store each time unless INVAD_S3_KEEP_DATA=1)
#   scripts/services.sh status    one line per service
#   scripts/services.sh env       print the env file (`eval "$(scripts/services.sh env)"` to load it)
#
# Cache:      ${INVAD_CACHE:-$HOME/.cache/invad}   (kafka-<v>/libs, s3proxy-<v>/s3proxy.jar, m2/)
# Run state:  ${INVAD_RUN_DIR:-$INVAD_CACHE/run}   (pids, data, logs, services.env)
# Ports:      INVAD_KAFKA_PORT (19092; its KRaft controller INVAD_KAFKA_CONTROLLER_PORT, default +1),
#             INVAD_REDIS_PORT (16379), INVAD_S3_PORT (18333). Two instances need a run dir and ports each.
# A service whose INVAD_TEST_KAFKA / INVAD_TEST_REDIS_URL / INVAD_TEST_S3_ENDPOINT is already set is
# not started; the given value is passed through into services.env.
set -euo pipefail

INVAD_CACHE="${INVAD_CACHE:-$HOME/.cache/invad}"
RUN_DIR="${INVAD_RUN_DIR:-$INVAD_CACHE/run}"
LOG_DIR="$RUN_DIR/logs"
ENV_FILE="$RUN_DIR/services.env"

KAFKA_VERSIONS="${INVAD_KAFKA_VERSION:-4.4.0 4.3.1}"   # first one that resolves wins
SLF4J_BINDING="org.apache.logging.log4j:log4j-slf4j-impl:2.25.5"  # Kafka 4.x ships slf4j-api 1.7.x
# org.gaul:s3proxy (Java 17); 4.x, unlike 3.0, accepts the x-amz-checksum-* headers boto3 sends by default
S3PROXY_VERSION="${INVAD_S3PROXY_VERSION:-4.1.0}"

KAFKA_PORT="${INVAD_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${INVAD_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
REDIS_PORT="${INVAD_REDIS_PORT:-16379}"
S3_PORT="${INVAD_S3_PORT:-18333}"
S3_ACCESS_KEY_DEFAULT="invad-test-access"
S3_SECRET_KEY_DEFAULT="invad-test-secret-key"

KAFKA_START_TIMEOUT="${INVAD_KAFKA_START_TIMEOUT:-90}"
REDIS_START_TIMEOUT=15
S3_START_TIMEOUT="${INVAD_S3_START_TIMEOUT:-60}"

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

need_java_and_maven() { # $1 = label
  command -v mvn >/dev/null || die "$1: mvn (Maven) not found; apt-get install -y maven"
  command -v java >/dev/null || die "$1: java not found; a Java 17 runtime is needed (apt-get install -y openjdk-17-jre-headless)"
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
  need_java_and_maven kafka
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

s3proxy_jar() { echo "$INVAD_CACHE/s3proxy-$S3PROXY_VERSION/s3proxy.jar"; }

install_s3proxy() {
  local jar home t0 fetched
  jar="$(s3proxy_jar)"
  home="$(dirname "$jar")"
  if [[ -f "$home/.complete" ]]; then
    log "s3proxy: already installed ($jar)"
    return
  fi
  need_java_and_maven s3proxy
  t0=$(now)
  # s3proxy's release build with its dependencies inside: one download, and exactly the library
  # versions s3proxy is built and tested with (no dependency mediation on our side)
  log "s3proxy: fetching org.gaul:s3proxy:$S3PROXY_VERSION:jar-with-dependencies from Maven Central"
  rm -rf "$home.tmp"
  mkdir -p "$home.tmp"
  if ! (cd "$home.tmp" && mvn -B -q -Dmaven.repo.local="$INVAD_CACHE/m2" dependency:get -Dtransitive=false \
          -Dartifact="org.gaul:s3proxy:$S3PROXY_VERSION:jar:jar-with-dependencies" >"$home.tmp/mvn.log" 2>&1); then
    tail -n 15 "$home.tmp/mvn.log" >&2 || true
    die "s3proxy: Maven could not fetch org.gaul:s3proxy:$S3PROXY_VERSION (log: $home.tmp/mvn.log;" \
        "INVAD_S3PROXY_VERSION picks another version)"
  fi
  fetched="$INVAD_CACHE/m2/org/gaul/s3proxy/$S3PROXY_VERSION/s3proxy-$S3PROXY_VERSION-jar-with-dependencies.jar"
  [[ -f "$fetched" ]] || die "s3proxy: Maven reported success but $fetched is missing"
  ln -f "$fetched" "$home.tmp/s3proxy.jar" 2>/dev/null || cp "$fetched" "$home.tmp/s3proxy.jar"
  touch "$home.tmp/.complete"
  rm -rf "$home"
  mv "$home.tmp" "$home"
  log "s3proxy: installed $S3PROXY_VERSION into $home ($(du -m "$jar" | cut -f1) MB, $(($(now) - t0)) s)"
}

cmd_install() {
  mkdir -p "$INVAD_CACHE"
  # Two installs at once (two test runs on one machine) would share the Maven repository and the
  # .tmp folders: the second waits for the first, then finds everything installed.
  exec 9>"$INVAD_CACHE/install.lock"
  flock 9
  local t0
  t0=$(now); install_redis; log "redis: install step took $(($(now) - t0)) s"
  t0=$(now); install_kafka; log "kafka: install step took $(($(now) - t0)) s"
  t0=$(now); install_s3proxy; log "s3proxy: install step took $(($(now) - t0)) s"
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
  if pid_alive "$pidf" redis-server; then log "redis: already running (pid $(cat "$pidf"))"; WAIT+=(redis); return; fi
  command -v redis-server >/dev/null || die "redis: redis-server not installed; run: $0 install"
  check_port_free redis "$REDIS_PORT"
  mkdir -p "$RUN_DIR/redis"
  launch redis "$logf" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
    --daemonize no --dir "$RUN_DIR/redis" --save "" --appendonly no --databases 16
  WAIT+=(redis)
}

redis_ping() { # prints PONG when our Redis answers (scripts/secure_services.sh redefines it for TLS)
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null
}

wait_redis() {
  local pidf="$RUN_DIR/redis.pid" logf="$LOG_DIR/redis.log" t0
  t0=$(now)
  until [[ "$(redis_ping)" == PONG ]]; do
    pid_alive "$pidf" redis-server || fail_start redis "$logf" "process exited"
    (($(now) - t0 < REDIS_START_TIMEOUT)) || fail_start redis "$logf" "no PONG on 127.0.0.1:$REDIS_PORT after ${REDIS_START_TIMEOUT}s"
    sleep 0.2
  done
}

write_kafka_config() { # $1 = kafka run dir
  local kd="$1"
  {
    echo "# generated by scripts/services.sh; single-node KRaft test broker on loopback"
    echo "listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    kafka_common_properties "$kd"
  } >"$kd/server.properties"
  write_kafka_log4j "$kd"
}

kafka_common_properties() { # $1 = kafka run dir; prints what every test broker shares (not its listeners)
  cat <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
log.dirs=$1/data
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
}

write_kafka_log4j() { # $1 = kafka run dir
  cat >"$1/log4j2.properties" <<'EOF'
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

format_kafka() { # $1 = kafka home, $2 = kafka run dir, rest = extra StorageTool format arguments
  local home="$1" kd="$2" cid
  shift 2
  rm -rf "$kd/data"
  cid="$(java -cp "$home/libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
  [[ -n "$cid" ]] || die "kafka: could not generate a cluster id (kafka.tools.StorageTool random-uuid)"
  if ! java -Xmx256m -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$kd/log4j2.properties" \
       -cp "$home/libs/*" kafka.tools.StorageTool format -t "$cid" -c "$kd/server.properties" --standalone "$@" \
       >"$LOG_DIR/kafka-format.log" 2>&1; then
    fail_start kafka "$LOG_DIR/kafka-format.log" "storage format (kafka.tools.StorageTool format) failed"
  fi
}

launch_kafka() { # $1 = kafka home, $2 = kafka run dir
  launch kafka "$LOG_DIR/kafka.log" java -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$2/log4j2.properties" -cp "$1/libs/*" kafka.Kafka "$2/server.properties"
}

start_kafka() {
  local kd="$RUN_DIR/kafka" pidf="$RUN_DIR/kafka.pid" logf="$LOG_DIR/kafka.log" home
  if pid_alive "$pidf" kafka.Kafka; then log "kafka: already running (pid $(cat "$pidf"))"; WAIT+=(kafka); return; fi
  [[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] || die "kafka: INVAD_KAFKA_PORT and" \
    "INVAD_KAFKA_CONTROLLER_PORT are both $KAFKA_PORT; the broker and its KRaft controller need two ports"
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
    format_kafka "$home" "$kd"
    echo "$stamp" >"$kd/format.stamp"
  fi
  launch_kafka "$home" "$kd"
  WAIT+=(kafka)
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

s3proxy_conf() { echo "$RUN_DIR/s3proxy/s3proxy.properties"; }  # unique per run dir: names our process

find_pid() { # $1 = text in the command line, $2 = a second text; prints the first such pid, or nothing
  local f
  # grep's own command line holds $1 too, but not $2
  for f in $(grep -lsF -- "$1" /proc/[0-9]*/cmdline); do
    if { tr '\0' ' ' <"$f"; } 2>/dev/null | grep -qF -- "$2"; then  # the process may be gone by now
      f="${f#/proc/}"
      echo "${f%/cmdline}"
      return
    fi
  done
}

check_s3_keys() { # the keys go into a Java properties file and a curl --user argument unescaped
  local name value
  for name in S3_ACCESS_KEY S3_SECRET_KEY; do
    value="${!name}"
    [[ "$value" =~ ^[A-Za-z0-9._+/=-]+$ ]] || die "s3proxy: INVAD_TEST_$name: S3 keys for the local" \
      "server may only contain letters, digits and . _ + / = - (got '$value')"
  done
}

write_s3proxy_config() { # $1 = s3proxy run dir
  local sd="$1"
  cat >"$(s3proxy_conf)" <<EOC
# generated by scripts/services.sh; S3 API on loopback, SigV2/SigV4 auth, objects as files under data/
s3proxy.endpoint=http://127.0.0.1:$S3_PORT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$S3_ACCESS_KEY
s3proxy.credential=$S3_SECRET_KEY
jclouds.provider=filesystem-nio2
jclouds.filesystem.basedir=$sd/data
EOC
  # without a configuration logback logs everything at DEBUG (Jetty's wiring, every request)
  cat >"$sd/logback.xml" <<'EOC'
<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>[%d] %level %msg \(%logger{20}\)%n</pattern></encoder>
  </appender>
  <logger name="org.gaul.shaded.org.eclipse.jetty" level="WARN"/>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
EOC
}

adopt_s3proxy() {
  # our server for this run dir may be up with its pid file gone (deleted run state, a start killed
  # half-way): recognised by its configuration path, it gets its pid file back, so that start reuses
  # it instead of reporting a port clash, and status and stop see it
  local conf pid
  conf="$(s3proxy_conf)"
  if ! pid_alive "$RUN_DIR/s3proxy.pid" "$conf"; then
    pid="$(find_pid "$conf" org.gaul.s3proxy.Main)"
    if [[ -n "$pid" ]]; then mkdir -p "$RUN_DIR" && echo "$pid" >"$RUN_DIR/s3proxy.pid"; fi
  fi
}

start_s3() {
  local sd="$RUN_DIR/s3proxy" pidf="$RUN_DIR/s3proxy.pid" logf="$LOG_DIR/s3proxy.log" conf jar
  conf="$(s3proxy_conf)"
  check_s3_keys
  adopt_s3proxy
  if pid_alive "$pidf" "$conf"; then
    if ! grep -qxF "s3proxy.endpoint=http://127.0.0.1:$S3_PORT" "$conf" \
       || ! grep -qxF "s3proxy.identity=$S3_ACCESS_KEY" "$conf" || ! grep -qxF "s3proxy.credential=$S3_SECRET_KEY" "$conf"; then
      die "s3proxy: already running (pid $(cat "$pidf")) with another port or keys ($conf);" \
          "run: $0 stop, then start again"
    fi
    log "s3proxy: already running (pid $(cat "$pidf"))"
    WAIT+=(s3proxy)
    return
  fi
  jar="$(s3proxy_jar)"
  [[ -f "$(dirname "$jar")/.complete" ]] || die "s3proxy: not installed ($jar); run: $0 install"
  command -v java >/dev/null || die "s3proxy: java not found"
  check_port_free s3proxy "$S3_PORT"
  # a fresh store on every start: tests never need objects from a previous run
  if [[ "${INVAD_S3_KEEP_DATA:-0}" != 1 ]]; then rm -rf "$sd/data"; fi
  mkdir -p "$sd/data"
  write_s3proxy_config "$sd"
  # -Xmx: s3proxy holds a SigV4-signed single-part upload in memory to check its hash
  launch s3proxy "$logf" java -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Dlogback.configurationFile="$sd/logback.xml" \
    -cp "$jar" org.gaul.s3proxy.Main --properties "$conf"
  WAIT+=(s3proxy)
}

s3_probe() { # one signed S3 round trip: create bucket, put, get, delete object and bucket
  # an explicit Content-Type: with curl's default (a form) the server reads the body as query
  # parameters, and the signature it computes then differs from curl's
  local sig=(--aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY"
             -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -H "Content-Type: application/octet-stream"
             -s -m 5 -o /dev/null -w '%{http_code}')
  local url="http://127.0.0.1:$S3_PORT/invad-readiness-probe"
  [[ "$(curl "${sig[@]}" -X PUT "$url")" =~ ^(200|409)$ ]] || return 1
  [[ "$(curl "${sig[@]}" -X PUT --data-binary ready "$url/probe")" == 200 ]] || return 1
  [[ "$(curl "${sig[@]}" "$url/probe")" == 200 ]] || return 1
  curl "${sig[@]}" -X DELETE "$url/probe" >/dev/null || true
  curl "${sig[@]}" -X DELETE "$url" >/dev/null || true
}

wait_s3() {
  local pidf="$RUN_DIR/s3proxy.pid" logf="$LOG_DIR/s3proxy.log" conf t0
  conf="$(s3proxy_conf)"
  t0=$(now)
  # the port accepts connections once Jetty listens; then a signed write must go through
  until port_open "$S3_PORT" && s3_probe; do
    pid_alive "$pidf" "$conf" || fail_start s3proxy "$logf" "process exited"
    (($(now) - t0 < S3_START_TIMEOUT)) || fail_start s3proxy "$logf" \
      "S3 on 127.0.0.1:$S3_PORT not answering a signed PUT/GET after ${S3_START_TIMEOUT}s"
    sleep 0.3
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
  WAIT=()  # what this script runs: just launched or already up, each is checked for readiness
  local t0
  t0=$(now)
  # launch everything first, then wait: the three boot in parallel
  if [[ -n "${INVAD_TEST_REDIS_URL:-}" ]]; then log "redis: using INVAD_TEST_REDIS_URL=$INVAD_TEST_REDIS_URL"; else start_redis; fi
  if [[ -n "${INVAD_TEST_KAFKA:-}" ]]; then log "kafka: using INVAD_TEST_KAFKA=$INVAD_TEST_KAFKA"; else start_kafka; fi
  if [[ -n "${INVAD_TEST_S3_ENDPOINT:-}" ]]; then log "s3proxy: using INVAD_TEST_S3_ENDPOINT=$INVAD_TEST_S3_ENDPOINT"; else start_s3; fi
  local s
  for s in "${WAIT[@]}"; do
    case "$s" in
      redis) wait_redis; log "redis: ready on 127.0.0.1:$REDIS_PORT (pid $(cat "$RUN_DIR/redis.pid"), $(($(now) - t0)) s)" ;;
      kafka) wait_kafka; log "kafka: ready on 127.0.0.1:$KAFKA_PORT (pid $(cat "$RUN_DIR/kafka.pid"), $(($(now) - t0)) s)" ;;
      s3proxy) wait_s3; log "s3proxy: S3 ready on 127.0.0.1:$S3_PORT (pid $(cat "$RUN_DIR/s3proxy.pid"), $(($(now) - t0)) s)" ;;
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
  adopt_s3proxy
  stop_one s3proxy "$(s3proxy_conf)" 10 &
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
  adopt_s3proxy
  status_line kafka kafka.Kafka INVAD_TEST_KAFKA "127.0.0.1:$KAFKA_PORT"
  status_line redis redis-server INVAD_TEST_REDIS_URL "127.0.0.1:$REDIS_PORT"
  status_line s3proxy "$(s3proxy_conf)" INVAD_TEST_S3_ENDPOINT "127.0.0.1:$S3_PORT (S3)"
}

cmd_env() {
  [[ -f "$ENV_FILE" ]] || die "no env file at $ENV_FILE; run: $0 start"
  cat "$ENV_FILE"
}

# Sourced (scripts/secure_services.sh reuses these functions): define them, run nothing.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
  esac
fi
