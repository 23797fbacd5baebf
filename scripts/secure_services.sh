#!/usr/bin/env bash
# Test services configured as production should be: a Kafka broker that only speaks SASL_SSL
# (SCRAM-SHA-512, client certificates required) and a Redis that only speaks TLS (client certificates
# required, no default user, ACL users only). On ports and a run directory of their own, so the plain
# services of scripts/services.sh keep running beside them.
#
#   scripts/secure_services.sh start    generate a throwaway CA, certificates and passwords, start both,
#                                       wait until each answers an authenticated TLS round trip,
#                                       write the env file
#   scripts/secure_services.sh stop     stop both and delete the keys and passwords
#   scripts/secure_services.sh status   one line per service
#   scripts/secure_services.sh env      print the env file (`eval "$(scripts/secure_services.sh env)"`)
#
# Needs what scripts/services.sh installs (Kafka, redis-server built with TLS, Java 17), plus openssl.
# Run state:  ${INVAD_RUN_DIR:-$INVAD_CACHE/run-secure}: tls/ (CA, keys: mode 600, never committed),
#             kafka/, redis/, logs/, secure.env (mode 600: it holds the passwords)
# Ports:      INVAD_SECURE_KAFKA_PORT (19392, SASL_SSL; its KRaft controller INVAD_SECURE_KAFKA_CONTROLLER_PORT,
#             default +1, plaintext on loopback), INVAD_SECURE_REDIS_PORT (16390, TLS only)
# Users:      Kafka `invad` (clients) and `invad-broker` (inter-broker), SCRAM-SHA-512. Redis `invad-admin`
#             (everything) and `invad-worker` (the least-privilege ACL of deploy/README.md on keys
#             `invad-secure*`). Every password is random per start.
set -euo pipefail

INVAD_CACHE="${INVAD_CACHE:-$HOME/.cache/invad}"
export INVAD_RUN_DIR="${INVAD_RUN_DIR:-$INVAD_CACHE/run-secure}"
# services.sh reads its ports from these: point them at ours before sourcing it
export INVAD_KAFKA_PORT="${INVAD_SECURE_KAFKA_PORT:-19392}"
export INVAD_KAFKA_CONTROLLER_PORT="${INVAD_SECURE_KAFKA_CONTROLLER_PORT:-$((INVAD_KAFKA_PORT + 1))}"
export INVAD_REDIS_PORT="${INVAD_SECURE_REDIS_PORT:-16390}"
# shellcheck source=services.sh
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"

log() { echo "[secure-services] $*" >&2; }
die() { echo "[secure-services] ERROR: $*" >&2; exit 1; }

TLS_DIR="$RUN_DIR/tls"
SECRETS="$TLS_DIR/passwords"
SECURE_ENV="$RUN_DIR/secure.env"
REDIS_PREFIX_PATTERN="invad-secure*"

need() { # $1 = command, $2 = how to get it
  command -v "$1" >/dev/null || die "$1 not found: $2"
}

# ---------------------------------------------------------------------------------------------
# certificates and passwords
# ---------------------------------------------------------------------------------------------

issue() { # $1 = name, $2 = subject CN, $3 = x509 extensions; an EC P-256 key and a certificate signed by the CA
  local name="$1"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2" \
    -keyout "$TLS_DIR/$name.key" -out "$TLS_DIR/$name.csr" 2>/dev/null
  printf '%b' "$3" >"$TLS_DIR/$name.ext"
  openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" -CAcreateserial \
    -days 2 -sha256 -extfile "$TLS_DIR/$name.ext" -out "$TLS_DIR/$name.pem" 2>/dev/null
  rm -f "$TLS_DIR/$name.csr" "$TLS_DIR/$name.ext"
}

make_tls() {
  # Throwaway: a new CA on every start, valid two days, its key deleted with the run directory.
  rm -rf "$TLS_DIR"
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -sha256 \
    -subj "/CN=invad throwaway test CA" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null \
    || die "openssl could not create the test CA"
  issue server localhost \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
  issue client invad-client \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
  # Kafka's PEM key store: the PKCS#8 key, then the certificate chain, in one file
  cat "$TLS_DIR/server.key" "$TLS_DIR/server.pem" "$TLS_DIR/ca.pem" >"$TLS_DIR/server-keystore.pem"
  chmod 600 "$TLS_DIR"/*.key "$TLS_DIR/server-keystore.pem"
  {
    for name in KAFKA_PASSWORD KAFKA_BROKER_PASSWORD REDIS_ADMIN_PASSWORD REDIS_WORKER_PASSWORD; do
      echo "$name=$(openssl rand -hex 16)"
    done
  } >"$SECRETS"
  chmod 600 "$SECRETS"
}

secret() { # $1 = name in the passwords file
  sed -n "s/^$1=//p" "$SECRETS"
}

# ---------------------------------------------------------------------------------------------
# Kafka: SASL_SSL only (plus its KRaft controller on loopback)
# ---------------------------------------------------------------------------------------------

write_secure_kafka_config() { # $1 = kafka run dir
  local kd="$1"
  {
    echo "# generated by scripts/secure_services.sh; single-node KRaft broker, SASL_SSL + SCRAM-SHA-512 only"
    echo "listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
    echo "advertised.listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
    echo "inter.broker.listener.name=SASL_SSL"
    echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    echo "sasl.enabled.mechanisms=SCRAM-SHA-512"
    echo "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512"
    echo "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule" \
         "required username=\"invad-broker\" password=\"$(secret KAFKA_BROKER_PASSWORD)\";"
    echo "ssl.keystore.type=PEM"
    echo "ssl.keystore.location=$TLS_DIR/server-keystore.pem"
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=$TLS_DIR/ca.pem"
    echo "listener.name.sasl_ssl.ssl.client.auth=required"
    kafka_common_properties "$kd"
  } >"$kd/server.properties"
  chmod 600 "$kd/server.properties"
  write_kafka_log4j "$kd"
}

start_secure_kafka() {
  local kd="$RUN_DIR/kafka" home
  home="$(kafka_home)"
  [[ -n "$home" ]] || die "kafka: not installed; run: scripts/services.sh install"
  check_port_free kafka "$KAFKA_PORT"
  check_port_free kafka-controller "$KAFKA_CONTROLLER_PORT"
  mkdir -p "$kd"
  write_secure_kafka_config "$kd"
  # SCRAM credentials go into the metadata log at format time: they exist before the first connection
  format_kafka "$home" "$kd" \
    --add-scram "SCRAM-SHA-512=[name=invad-broker,password=$(secret KAFKA_BROKER_PASSWORD)]" \
    --add-scram "SCRAM-SHA-512=[name=invad,password=$(secret KAFKA_PASSWORD)]"
  launch_kafka "$home" "$kd"
}

# ---------------------------------------------------------------------------------------------
# Redis: TLS only, ACL users only
# ---------------------------------------------------------------------------------------------

start_secure_redis() {
  local rd="$RUN_DIR/redis"
  # (not `ldd | grep -q`: grep's early exit fails the pipeline under pipefail now and then)
  [[ "$(ldd "$(command -v redis-server)" 2>/dev/null)" == *libssl* ]] \
    || die "redis: $(command -v redis-server) is built without TLS; install a redis-server built with BUILD_TLS=yes"
  check_port_free redis "$REDIS_PORT"
  mkdir -p "$rd"
  # a config file, not flags: the passwords stay out of the process list
  cat >"$rd/redis.conf" <<EOF
# generated by scripts/secure_services.sh
bind 127.0.0.1
protected-mode yes
port 0
tls-port $REDIS_PORT
tls-cert-file $TLS_DIR/server.pem
tls-key-file $TLS_DIR/server.key
tls-ca-cert-file $TLS_DIR/ca.pem
tls-auth-clients yes
daemonize no
dir $rd
save ""
appendonly no
databases 16
user default off
user invad-admin on >$(secret REDIS_ADMIN_PASSWORD) ~* &* +@all
user invad-worker on >$(secret REDIS_WORKER_PASSWORD) ~$REDIS_PREFIX_PATTERN +ping +get +set +del +exists +expire +zadd +zremrangebyrank +multi +exec +discard +eval +evalsha +script|load +script|exists +xadd +hget +hset
EOF
  chmod 600 "$rd/redis.conf"
  launch redis "$LOG_DIR/redis.log" redis-server "$rd/redis.conf"
}

redis_ping() { # services.sh's wait_redis pings through this: over TLS, as the admin user
  REDISCLI_AUTH="$(secret REDIS_ADMIN_PASSWORD)" redis-cli --tls --cacert "$TLS_DIR/ca.pem" \
    --cert "$TLS_DIR/client.pem" --key "$TLS_DIR/client.key" -h 127.0.0.1 -p "$REDIS_PORT" \
    --user invad-admin ping 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

write_secure_env() {
  local tmp="$SECURE_ENV.tmp"
  (
    umask 077
    {
      echo "# written by scripts/secure_services.sh start; source this file (it holds test passwords)"
      echo "export INVAD_TEST_SECURE_KAFKA=127.0.0.1:$KAFKA_PORT"
      echo "export INVAD_TEST_SECURE_KAFKA_USER=invad"
      echo "export INVAD_TEST_SECURE_KAFKA_PASSWORD=$(secret KAFKA_PASSWORD)"
      echo "export INVAD_TEST_SECURE_REDIS_URL=rediss://127.0.0.1:$REDIS_PORT/0"
      echo "export INVAD_TEST_SECURE_REDIS_ADMIN=invad-admin"
      echo "export INVAD_TEST_SECURE_REDIS_ADMIN_PASSWORD=$(secret REDIS_ADMIN_PASSWORD)"
      echo "export INVAD_TEST_SECURE_REDIS_WORKER=invad-worker"
      echo "export INVAD_TEST_SECURE_REDIS_WORKER_PASSWORD=$(secret REDIS_WORKER_PASSWORD)"
      echo "export INVAD_TEST_SECURE_REDIS_PREFIX_PATTERN='$REDIS_PREFIX_PATTERN'"
      echo "export INVAD_TEST_SECURE_CA=$TLS_DIR/ca.pem"
      echo "export INVAD_TEST_SECURE_CLIENT_CERT=$TLS_DIR/client.pem"
      echo "export INVAD_TEST_SECURE_CLIENT_KEY=$TLS_DIR/client.key"
    } >"$tmp"
  )
  mv -f "$tmp" "$SECURE_ENV"
}

cmd_secure_start() {
  local t0 running=0
  t0=$(now)
  pid_alive "$RUN_DIR/kafka.pid" kafka.Kafka && running=$((running + 1))
  pid_alive "$RUN_DIR/redis.pid" redis-server && running=$((running + 1))
  if ((running == 2)) && [[ -f "$SECURE_ENV" ]]; then
    log "already running (kafka pid $(cat "$RUN_DIR/kafka.pid"), redis pid $(cat "$RUN_DIR/redis.pid"))"
    return
  fi
  ((running == 0)) || die "only one of the two is running in $RUN_DIR; run: $0 stop, then start again"
  need openssl "apt-get install -y openssl"
  need java "a Java 17 runtime is needed (apt-get install -y openjdk-17-jre-headless)"
  need redis-server "run: scripts/services.sh install"
  need redis-cli "run: scripts/services.sh install"
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  make_tls
  log "tls: throwaway CA, server and client certificates in $TLS_DIR ($(($(now) - t0)) s)"
  start_secure_redis
  start_secure_kafka
  wait_redis
  log "redis: TLS ready on 127.0.0.1:$REDIS_PORT (pid $(cat "$RUN_DIR/redis.pid"), $(($(now) - t0)) s)"
  wait_kafka
  log "kafka: SASL_SSL ready on 127.0.0.1:$KAFKA_PORT (pid $(cat "$RUN_DIR/kafka.pid"), $(($(now) - t0)) s)"
  write_secure_env
  log "env file: $SECURE_ENV"
}

cmd_secure_stop() {
  stop_one kafka kafka.Kafka 30 &
  stop_one redis redis-server 10 &
  wait
  # the keys and passwords live no longer than the servers that use them
  rm -rf "$TLS_DIR" "$SECURE_ENV" "$RUN_DIR/kafka/server.properties" "$RUN_DIR/redis/redis.conf" \
    "$LOG_DIR/kafka-format.log"
}

cmd_secure_status() {
  local name word port
  for name in kafka redis; do
    word=$([[ $name == kafka ]] && echo kafka.Kafka || echo redis-server)
    port=$([[ $name == kafka ]] && echo "$KAFKA_PORT (SASL_SSL)" || echo "$REDIS_PORT (TLS)")
    if pid_alive "$RUN_DIR/$name.pid" "$word"; then
      echo "$name: running (pid $(cat "$RUN_DIR/$name.pid")) on 127.0.0.1:$port, log $LOG_DIR/$name.log"
    else
      echo "$name: stopped"
    fi
  done
}

case "${1:-}" in
  start) cmd_secure_start ;;
  stop) cmd_secure_stop ;;
  status) cmd_secure_status ;;
  env) [[ -f "$SECURE_ENV" ]] || die "no env file at $SECURE_ENV; run: $0 start"; cat "$SECURE_ENV" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
