"""The Kafka and Redis security settings without servers: combinations that cannot work and bad
certificate files are configuration errors (exit 2, naming the setting and the fix), the kafka-python
arguments every client gets, how a refused bootstrap is explained, and the password kept out of logs.
(The same settings against a real SASL_SSL broker and a TLS Redis: test_pipeline_secure.py.)"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kafka import errors as kerrors

from services import unavailable
from worker.common import kafka_security, redis_client, tls
from worker.pipeline.config import WorkerConfig, read_settings

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def pem(tmp_path_factory) -> dict[str, str]:
    """A self-signed certificate for 127.0.0.1 with its key, and a second, unrelated key."""
    if shutil.which("openssl") is None:
        unavailable("openssl not found (apt-get install -y openssl): needed to make test certificates")
    folder = tmp_path_factory.mktemp("pem")
    paths = {name: str(folder / name) for name in ("cert.pem", "key.pem", "other.key")}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", paths["key.pem"], "-out", paths["cert.pem"]], check=True, capture_output=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-out", paths["other.key"]], check=True, capture_output=True)
    return paths


def kafka(**env: str) -> dict[str, str]:
    return {"INVAD_KAFKA_BOOTSTRAP": "broker:9093", **env}


SASL = dict(INVAD_KAFKA_SECURITY_PROTOCOL="SASL_SSL", INVAD_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
            INVAD_KAFKA_SASL_USERNAME="invad", INVAD_KAFKA_SASL_PASSWORD="pw-secret-1")


@pytest.mark.parametrize("env, words", [
    (dict(INVAD_KAFKA_SECURITY_PROTOCOL="SASL_SSL"), "is SASL_SSL, which needs INVAD_KAFKA_SASL_MECHANISM"),
    ({**SASL, "INVAD_KAFKA_SASL_PASSWORD": ""}, "which needs INVAD_KAFKA_SASL_PASSWORD as well"),
    (dict(INVAD_KAFKA_SASL_USERNAME="invad"), "is PLAINTEXT, which does not use SASL"),
    (dict(INVAD_KAFKA_SSL_CAFILE="/ca.pem"), "is PLAINTEXT, which does not use TLS"),
    (dict(INVAD_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", INVAD_KAFKA_SASL_MECHANISM="PLAIN",
          INVAD_KAFKA_SASL_USERNAME="u", INVAD_KAFKA_SASL_PASSWORD="p", INVAD_KAFKA_SSL_CHECK_HOSTNAME="false"),
     "INVAD_KAFKA_SSL_CHECK_HOSTNAME (--kafka-ssl-check-hostname) set"),
    (dict(INVAD_KAFKA_SECURITY_PROTOCOL="TLS"), "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({**SASL, "INVAD_KAFKA_SASL_MECHANISM": "GSSAPI"}, "must be one of SCRAM-SHA-256, SCRAM-SHA-512, PLAIN"),
    (dict(INVAD_KAFKA_SECURITY_PROTOCOL="SSL", INVAD_KAFKA_SSL_CAFILE="/no/such/ca.pem"), "does not exist"),
    (dict(INVAD_KAFKA_SECURITY_PROTOCOL="SSL", INVAD_KAFKA_SSL_CAFILE=__file__), "holds no PEM certificate"),
    (dict(INVAD_REDIS_SSL_CA_CERTS="/ca.pem"), "INVAD_REDIS_URL (--redis-url) is not a rediss:// URL"),
])
def test_combinations_that_cannot_work_are_refused_naming_the_settings(env, words):
    with pytest.raises(ValueError) as raised:
        WorkerConfig.from_sources({}, kafka(**env), mode="embedded")
    assert words in str(raised.value)
    assert "pw-secret-1" not in str(raised.value)


def test_certificate_files_are_checked_as_a_pair(pem):
    ssl_env = dict(INVAD_KAFKA_SECURITY_PROTOCOL="SSL", INVAD_KAFKA_SSL_CAFILE=pem["cert.pem"])
    config = WorkerConfig.from_sources({}, kafka(**ssl_env, INVAD_KAFKA_SSL_CERTFILE=pem["cert.pem"],
                                                 INVAD_KAFKA_SSL_KEYFILE=pem["key.pem"]), mode="embedded")
    assert config.kafka_ssl_keyfile == pem["key.pem"]
    with pytest.raises(ValueError, match="do not load as an unencrypted PEM pair"):
        WorkerConfig.from_sources({}, kafka(**ssl_env, INVAD_KAFKA_SSL_CERTFILE=pem["cert.pem"],
                                            INVAD_KAFKA_SSL_KEYFILE=pem["other.key"]), mode="embedded")
    with pytest.raises(ValueError, match="a key file without a certificate file"):
        WorkerConfig.from_sources({}, kafka(**ssl_env, INVAD_KAFKA_SSL_KEYFILE=pem["key.pem"]), mode="embedded")
    with pytest.raises(ValueError, match="INVAD_REDIS_SSL_CERTFILE .*do not load"):
        WorkerConfig.from_sources({}, {"INVAD_REDIS_URL": "rediss://u:p@r:6380/0", "INVAD_REDIS_SSL_CERTFILE": pem["cert.pem"],
                                       "INVAD_REDIS_SSL_KEYFILE": pem["other.key"]}, mode="embedded")


def test_client_kwargs_are_what_each_protocol_uses(pem):
    def kwargs(**env: str) -> dict:
        return kafka_security.client_kwargs(read_settings(kafka_security.SETTINGS, {}, env))

    assert kwargs() == {"security_protocol": "PLAINTEXT"}
    assert kwargs(**SASL, INVAD_KAFKA_SSL_CAFILE=pem["cert.pem"], INVAD_KAFKA_SSL_CHECK_HOSTNAME="false") == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "invad",
        "sasl_plain_password": "pw-secret-1", "ssl_cafile": pem["cert.pem"], "ssl_certfile": None,
        "ssl_keyfile": None, "ssl_check_hostname": False}
    assert kwargs(INVAD_KAFKA_SECURITY_PROTOCOL="SSL")["ssl_cafile"] is None  # the system's CAs
    with pytest.raises(ValueError, match="which needs"):  # the producers read them checked too
        kwargs(INVAD_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT")


def test_the_sasl_password_is_a_secret_and_stays_out_of_the_config_line():
    config = WorkerConfig.from_sources({}, kafka(**SASL), mode="embedded")
    assert config.redacted()["kafka_sasl_password"] == "***"
    assert "pw-secret-1" in config.secrets() and "pw-secret-1" not in repr(config)


def test_redis_client_takes_tls_files_only_for_rediss(pem):
    tls_files = {"redis_ssl_ca_certs": pem["cert.pem"], "redis_ssl_certfile": None, "redis_ssl_keyfile": None}
    secure = redis_client.connect("rediss://worker:pw@127.0.0.1:1/0", tls_files)
    kwargs = secure.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"]) == ("worker", pem["cert.pem"], "required")
    plain = redis_client.connect("redis://127.0.0.1:1/0", tls_files).connection_pool.connection_kwargs
    assert "ssl_ca_certs" not in plain


def test_work_and_produce_exit_2_on_a_bad_combination():
    environ = {**os.environ, "PYTHONPATH": str(REPO), **kafka(INVAD_KAFKA_SECURITY_PROTOCOL="SASL_SSL"),
               "INVAD_REDIS_URL": "redis://r:6379/0", "INVAD_S3_BUCKET": "bucket", "INVAD_MODELS": "/m"}
    for command in (["work"], ["produce", "-", "--topic", "t"]):
        done = subprocess.run([sys.executable, "-m", "worker.cli", *command], env=environ, cwd=str(REPO),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "INVAD_KAFKA_SECURITY_PROTOCOL (--kafka-security-protocol) is SASL_SSL, which needs" in done.stderr


def test_a_refused_bootstrap_is_explained_from_what_kafka_python_logged():
    sasl = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "invad",
            "bootstrap_servers": ["127.0.0.1:1"]}
    problem, fix = kafka_security.refusal([kerrors.SaslAuthenticationFailedError("invalid credentials")], sasl)
    assert "refused SASL SCRAM-SHA-512 authentication of user 'invad'" in problem and "INVAD_KAFKA_SASL_PASSWORD" in fix
    handshake = kerrors.KafkaConnectionError("Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert "INVAD_KAFKA_SSL_CAFILE" in kafka_security.refusal([handshake], sasl)[1]
    assert kafka_security.refusal([kerrors.KafkaConnectionError("socket disconnected")], sasl) is None  # an outage
    with kafka_security.BootstrapLog() as seen:  # what kafka-python logs, it hands over as arguments
        logging.getLogger("kafka.net.manager").warning("Bootstrap connection to %s failed: %s", "b-0",
                                                       kerrors.SaslAuthenticationFailedError("x"))
    assert [type(error).__name__ for error in seen.errors] == ["SaslAuthenticationFailedError"]


def test_speaks_tls_tells_a_tls_port_from_a_plaintext_one(pem):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem["cert.pem"], pem["key.pem"])
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]

    def serve(listener: socket.socket, wrap: bool) -> None:
        conn, _ = listener.accept()
        try:
            if wrap:
                with context.wrap_socket(conn, server_side=True):
                    pass
            else:
                conn.recv(1024)  # a plaintext server reads the ClientHello as garbage and hangs up
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
    threads = [threading.Thread(target=serve, args=(listener, wrap), daemon=True)
               for listener, wrap in zip(listeners, (True, False))]
    for thread in threads:
        thread.start()
    ports = [listener.getsockname()[1] for listener in listeners]
    assert tls.speaks_tls("127.0.0.1", ports[0]) is True
    assert tls.speaks_tls("127.0.0.1", ports[1]) is False
    for listener in listeners:
        listener.close()
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert tls.speaks_tls("127.0.0.1", port) is False  # nothing listening: an outage, not TLS
