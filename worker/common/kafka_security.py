"""How every Kafka client of invad authenticates and encrypts: the worker's consumer, dead-letter
producer and topic check, and the producers' publisher and topic admin all take their kafka-python
security arguments from :func:`client_kwargs`, and are made by :func:`make_client`, which tells a
refused password or certificate (:class:`Refused`) from an unreachable broker.

The settings are declared once, in worker/pipeline/config.py (``INVAD_KAFKA_SECURITY_PROTOCOL``,
``INVAD_KAFKA_SASL_*``, ``INVAD_KAFKA_SSL_*``); here they are read by attribute from any object that
has them (a WorkerConfig, or what ``config.read_settings`` returns for the producers). This module
does not import kafka-python: the producers' light imports and the one Kafka seam of the worker stay
as they are.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, TypeVar

from . import tls

T = TypeVar("T")

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
SETTINGS = ("kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
            "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_check_hostname")
_SASL = SETTINGS[1:4]
_SSL_FILES = SETTINGS[4:7]


def uses_sasl(protocol: str) -> bool:
    return protocol.startswith("SASL_")


def uses_tls(protocol: str) -> bool:
    return protocol.endswith("SSL")


def check(settings: Any, label: Callable[[str], str]) -> None:
    """The combinations that cannot work, refused at start: SASL without its mechanism, user or
    password; SASL or TLS settings the protocol would ignore; certificate files that are missing,
    unreadable, not PEM, or a key that does not match its certificate. ``label(name)`` names a
    setting the way the user set it (variable and flag).

    Raises:
        ValueError: naming the settings involved and what to change.
    """
    protocol = settings.kafka_security_protocol
    named_protocol = f"{label('kafka_security_protocol')} is {protocol}"
    if uses_sasl(protocol):
        missing = [label(name) for name in _SASL if not getattr(settings, name)]
        if missing:
            raise ValueError(f"{named_protocol}, which needs {', '.join(missing)} as well")
    else:
        ignored = [label(name) for name in _SASL if getattr(settings, name)]
        if ignored:
            raise ValueError(f"{', '.join(ignored)} set, but {named_protocol}, which does not use SASL: set the "
                             "protocol to SASL_SSL (or SASL_PLAINTEXT), or unset them")
    if not uses_tls(protocol):
        ignored = [label(name) for name in _SSL_FILES if getattr(settings, name)]
        if not settings.kafka_ssl_check_hostname:
            ignored.append(label("kafka_ssl_check_hostname"))
        if ignored:
            raise ValueError(f"{', '.join(ignored)} set, but {named_protocol}, which does not use TLS: set the "
                             "protocol to SSL or SASL_SSL, or unset them")
        return
    cafile, certfile, keyfile = (getattr(settings, name) for name in _SSL_FILES)
    try:
        tls.check_files(cafile, None, None)
    except ValueError as error:
        raise ValueError(f"{label('kafka_ssl_cafile')}: {error}") from None
    try:
        tls.check_files(None, certfile, keyfile)
    except ValueError as error:
        raise ValueError(f"{label('kafka_ssl_certfile')} / {label('kafka_ssl_keyfile')}: {error}") from None


def client_kwargs(settings: Any) -> dict[str, Any]:
    """The kafka-python keyword arguments (``security_protocol``, ``sasl_*``, ``ssl_*``) for ``settings``,
    the same for KafkaConsumer, KafkaProducer and KafkaAdminClient. Without a CA file a TLS client
    trusts the system's CAs."""
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if uses_sasl(protocol):
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    if uses_tls(protocol):
        kwargs.update(ssl_cafile=settings.kafka_ssl_cafile, ssl_certfile=settings.kafka_ssl_certfile,
                      ssl_keyfile=settings.kafka_ssl_keyfile, ssl_check_hostname=settings.kafka_ssl_check_hostname)
    return kwargs


class Refused(Exception):
    """The broker refused our configuration (credentials, certificate, protocol): waiting cannot help.
    ``problem`` says what it refused, ``fix`` what to change."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; fix: {fix}")
        self.problem, self.fix = problem, fix


def make_client(make: Callable[[], T], kwargs: Mapping[str, Any]) -> T:
    """``make()`` (a kafka-python client built with ``kwargs``), explaining a failed bootstrap.

    Raises:
        Refused: the failure was a refusal of our configuration (see :func:`refusal`).
        whatever ``make`` raised otherwise (an unreachable broker: kafka-python's KafkaTimeoutError).
    """
    with BootstrapLog() as seen:
        try:
            return make()
        except Exception as error:
            refused = refusal(seen.errors, kwargs)
            if refused:
                raise Refused(*refused) from error
            raise


class BootstrapLog(logging.Handler):
    """The exceptions kafka-python logs while a client is made (``with BootstrapLog() as seen: ...``).

    kafka-python 3.0 retries a refused connection until its bootstrap deadline and then raises a bare
    ``KafkaTimeoutError("Unable to bootstrap ...")``: why it was refused (a password, a certificate)
    is only in the records it logs, with the exception as an argument or as ``exc_info``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        self.errors += [arg for arg in args if isinstance(arg, BaseException)]
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])

    def __enter__(self) -> "BootstrapLog":
        logging.getLogger("kafka").addHandler(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        logging.getLogger("kafka").removeHandler(self)


def refusal(errors: list[BaseException], kwargs: Mapping[str, Any]) -> tuple[str, str] | None:
    """What a failed bootstrap means, when it means misconfiguration: (problem, fix), else None (an
    outage). ``errors``: from :class:`BootstrapLog`; ``kwargs``: the client's kafka-python arguments."""
    protocol = kwargs.get("security_protocol", "PLAINTEXT")
    servers = list(kwargs.get("bootstrap_servers") or [])
    for error in reversed(errors):
        kind, text = type(error).__name__, str(error)
        if kind == "SaslAuthenticationFailedError":
            return (f"the broker refused SASL {kwargs.get('sasl_mechanism')} authentication of user "
                    f"{kwargs.get('sasl_plain_username')!r} ({text})",
                    "set INVAD_KAFKA_SASL_USERNAME and INVAD_KAFKA_SASL_PASSWORD to a user the broker knows, "
                    "and INVAD_KAFKA_SASL_MECHANISM to the mechanism of its credential")
        if kind == "UnsupportedSaslMechanismError":
            return (f"the broker does not offer SASL mechanism {kwargs.get('sasl_mechanism')} ({text})",
                    "set INVAD_KAFKA_SASL_MECHANISM to one the broker enables (sasl.enabled.mechanisms)")
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return (f"the broker's certificate is not trusted ({text})",
                    "set INVAD_KAFKA_SSL_CAFILE to the CA that signed it (INVAD_KAFKA_SSL_CHECK_HOSTNAME=false "
                    "only where its name cannot match the bootstrap host)")
        if "WRONG_VERSION_NUMBER" in text:
            return (f"the broker at {servers} does not speak TLS ({text})",
                    "set INVAD_KAFKA_SECURITY_PROTOCOL to PLAINTEXT or SASL_PLAINTEXT, or use the port of its "
                    "TLS listener")
        if "ALERT" in text.upper() and uses_tls(protocol):
            return (f"the broker refused the TLS handshake ({text})",
                    "it wants a client certificate it trusts: set INVAD_KAFKA_SSL_CERTFILE and "
                    "INVAD_KAFKA_SSL_KEYFILE")
    if not uses_tls(protocol):
        for server in servers:
            host, _, port = str(server).rpartition(":")
            if port.isdigit() and tls.speaks_tls(host.strip("[]"), int(port)):
                return (f"{server} speaks TLS, but INVAD_KAFKA_SECURITY_PROTOCOL is {protocol}",
                        "set INVAD_KAFKA_SECURITY_PROTOCOL to SASL_SSL or SSL, and INVAD_KAFKA_SSL_CAFILE to "
                        "the CA of the broker's certificate")
    return None
