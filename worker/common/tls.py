"""TLS helpers shared by the Kafka and Redis settings: checking certificate files at start, and asking
a server whether it speaks TLS at all (to name the fix when a plaintext client meets a TLS port).

Standard library only: the producers import this, and nothing here may load a client library.
"""

from __future__ import annotations

import os
import socket
import ssl


def _readable(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{what} {path!r} is not readable by this process (uid {os.getuid()})")


def check_files(cafile: str | None, certfile: str | None, keyfile: str | None) -> None:
    """Each given file exists, is readable and holds what its name says: the CA file PEM certificates,
    the certificate and key a matching pair (the key in the certificate file when ``keyfile`` is None).

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    if keyfile and not certfile:
        raise ValueError("a key file without a certificate file: set the client certificate too")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        _readable(cafile, "CA file")
        try:
            context.load_verify_locations(cafile=cafile)
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(f"CA file {cafile!r} holds no PEM certificate ({error})") from None
    if certfile:
        _readable(certfile, "certificate file")
        if keyfile:
            _readable(keyfile, "key file")

        def no_password() -> bytes:  # never prompt on a terminal: an encrypted key is refused instead
            raise ValueError("the key is encrypted")
        try:
            context.load_cert_chain(certfile, keyfile, password=no_password)
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(f"certificate {certfile!r} and key {keyfile or certfile!r} do not load as an "
                             f"unencrypted PEM pair ({error}); a key must match its certificate and not be "
                             "encrypted (openssl pkey -in KEY -out PLAIN_KEY)") from None


def speaks_tls(host: str, port: int, timeout_s: float = 3.0) -> bool:
    """True when ``host:port`` answers a TLS ClientHello with TLS (a completed handshake, or a TLS alert
    such as "certificate required"); False when it closes, answers in plaintext or cannot be reached.
    Verifies nothing: it only tells which protocol the port speaks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                return True
    except ssl.SSLError as error:
        return "ALERT" in str(error).upper()  # the server spoke TLS, to refuse us
    except OSError:
        return False
