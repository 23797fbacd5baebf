"""The Redis client of every invad command (the worker's sink, `invad alerts`, benchmarks): one place
that turns the settings into a redis-py client, and says when a refused connection is a
misconfiguration rather than an outage.

Settings (declared in worker/pipeline/config.py, read here by attribute from any object that has
them, e.g. a WorkerConfig or ``config.read_settings(redis_client.SETTINGS)``):
``redis_url`` carries the ACL user and password (``redis://USER:PASSWORD@HOST:PORT/DB``; ``rediss://``
for TLS), ``redis_ssl_ca_certs`` the CA that signed the server's certificate (default: the system's
CAs), ``redis_ssl_certfile`` / ``redis_ssl_keyfile`` a client certificate for servers that want one
(``tls-auth-clients yes``). redis-py is imported only when a client is made.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

from . import tls

SETTINGS = ("redis_url", "redis_ssl_ca_certs", "redis_ssl_certfile", "redis_ssl_keyfile")
_TLS = SETTINGS[1:]


def check(settings: Any, label: Callable[[str], str]) -> None:
    """TLS settings only with a ``rediss://`` URL; the files exist, are readable, PEM, a matching pair.

    Raises:
        ValueError: naming the settings and what to change.
    """
    given = [name for name in _TLS if getattr(settings, name)]
    if not given:
        return
    if urlsplit(settings.redis_url or "").scheme != "rediss":
        raise ValueError(f"{', '.join(label(name) for name in given)} set, but {label('redis_url')} is not a "
                         "rediss:// URL: use rediss://[USER:PASSWORD@]HOST:PORT/DB for TLS, or unset them")
    try:
        tls.check_files(settings.redis_ssl_ca_certs, None, None)
    except ValueError as error:
        raise ValueError(f"{label('redis_ssl_ca_certs')}: {error}") from None
    try:
        tls.check_files(None, settings.redis_ssl_certfile, settings.redis_ssl_keyfile)
    except ValueError as error:
        raise ValueError(f"{label('redis_ssl_certfile')} / {label('redis_ssl_keyfile')}: {error}") from None


def tls_settings(settings: Any) -> dict[str, str | None]:
    """The TLS files of ``settings`` (a WorkerConfig, or ``config.read_settings(SETTINGS)``), as
    :func:`connect` takes them."""
    return {name: getattr(settings, name) for name in _TLS}


def connect(url: str, tls: dict[str, str | None] | None = None, **options: Any) -> Any:
    """A ``redis.Redis`` for ``url``: the ACL user and password from its userinfo (or ``?password=``),
    TLS with certificate and host name verification for ``rediss://``, with the files of ``tls``
    (:func:`tls_settings`). Nothing connects until the first command. ``options``: further redis-py
    arguments (timeouts, retry). E.g. ``connect(config.redis_url, tls_settings(config))``."""
    import redis

    if urlsplit(url).scheme == "rediss":
        tls = tls or {}
        options = {"ssl_cert_reqs": "required", "ssl_ca_certs": tls.get("redis_ssl_ca_certs"),
                   "ssl_certfile": tls.get("redis_ssl_certfile"), "ssl_keyfile": tls.get("redis_ssl_keyfile"),
                   **options}
    return redis.Redis.from_url(url, **options)


def tls_refusal(error: BaseException, url: str) -> tuple[str, str] | None:
    """(problem, fix) when a failed connection to ``url`` is a TLS misconfiguration: a certificate not
    trusted, a client certificate refused, TLS against a plaintext port or plaintext against a TLS
    port; None when it looks like an outage."""
    text = f"{error} {error.__context__ or ''}"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"Redis's certificate is not trusted ({error})",
                "set INVAD_REDIS_SSL_CA_CERTS to the CA that signed it")
    if "WRONG_VERSION_NUMBER" in text:
        return (f"Redis does not speak TLS on this port ({error})",
                "use a redis:// URL, or the port of its tls-port")
    parts = urlsplit(url)
    if parts.scheme == "rediss" and "ALERT" in text.upper():
        return (f"Redis refused the TLS handshake ({error})",
                "it wants a client certificate it trusts (tls-auth-clients): set INVAD_REDIS_SSL_CERTFILE and "
                "INVAD_REDIS_SSL_KEYFILE")
    if parts.scheme == "redis" and parts.hostname and tls.speaks_tls(parts.hostname, parts.port or 6379):
        return (f"{parts.hostname}:{parts.port or 6379} speaks TLS, but INVAD_REDIS_URL is redis:// ({error})",
                "use rediss://USER:PASSWORD@HOST:PORT/DB, and INVAD_REDIS_SSL_CA_CERTS for the server's CA")
    return None
