"""Masking credentials in anything that is logged: the start-up config line and every later log event.

Three forms are masked: the userinfo of a URL (``redis://user:pass@host`` -> ``redis://user:***@host``;
a lone ``token@host`` -> ``***@host``; also ``user:pass@host`` quoted without its scheme), the value
of a ``key=value`` pair whose key names a credential (``?password=``, ``&X-Amz-Signature=``,
``sasl_password=``, ... case-insensitive), and any literal secret value the process knows
(:class:`LogRedactor`, fed from the config's secret settings).
"""

from __future__ import annotations

import re
from typing import Any, Iterable
from urllib.parse import unquote

MASK = "***"

# A key that names a credential: password, passwd, pass, pwd, secret, token, key, access_key, secret_key,
# sasl_password, ssl_keyfile_password, api_key, auth, credential, signature, sig, X-Amz-Security-Token, ...
SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|sig|auth|cred", re.IGNORECASE)

# scheme://userinfo@ -- userinfo runs to the last "@" before the authority ends (as urlsplit reads it);
# quotes and commas are allowed in both patterns: masking a closing quote is better than leaking a secret.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/?#\s]*)@")
# user:password@host without a scheme (a message quoting a URL's netloc), after a start, space or quote.
_BARE_USERINFO = re.compile(r"(?:^|(?<=[\s'\"(\[{,=]))(?P<user>[^\s:/@'\"]*):(?P<password>[^\s/]*)@(?=[A-Za-z0-9\[])")
# key=value after ?, &, ; or a separator (query strings, DSNs, "k=v k=v" messages).
_PAIR = re.compile(r"(?:^|(?<=[?&;,\s(]))(?P<key>[A-Za-z0-9_.-]+)=(?P<value>[^&;#\s]*)")


def _mask_userinfo(match: re.Match) -> str:
    user, colon, _ = match["info"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if colon else f"{match['scheme']}{MASK}@"


def _mask_bare_userinfo(match: re.Match) -> str:
    return f"{match['user']}:{MASK}@"


def _mask_pair(match: re.Match) -> str:
    if match["value"] and SECRET_KEY.search(match["key"]):
        return f"{match['key']}={MASK}"
    return match[0]


def redact_text(text: str) -> str:
    """``text`` with every URL userinfo and every credential ``key=value`` value replaced by ``***``."""
    text = _BARE_USERINFO.sub(_mask_bare_userinfo, _USERINFO.sub(_mask_userinfo, text))
    return _PAIR.sub(_mask_pair, text)


def credentials_in(text: str) -> list[str]:
    """The credential substrings :func:`redact_text` would mask in ``text`` (raw and percent-decoded)."""
    found = []
    for match in _USERINFO.finditer(text):
        user, colon, password = match["info"].partition(":")
        found.append(password if colon else user)
    found += [m["password"] for m in _BARE_USERINFO.finditer(text)]
    found += [m["value"] for m in _PAIR.finditer(text) if m["value"] and SECRET_KEY.search(m["key"])]
    return [form for value in found if value for form in dict.fromkeys((value, unquote(value)))]


def redact_value(value: Any, secret: bool = False) -> Any:
    """A value fit for a log: secrets masked whole (a URL keeps its host, its credentials masked),
    strings passed through :func:`redact_text`, tuples as lists, containers recursively."""
    if value is None or value == "" or value == ():
        return list(value) if isinstance(value, tuple) else value
    if isinstance(value, str):
        return redact_text(value) if (not secret or "://" in value) else MASK
    if isinstance(value, (tuple, list)):
        return [redact_value(item, secret) for item in value]
    if isinstance(value, dict):
        return {key: redact_value(item, secret) for key, item in value.items()}
    return MASK if secret else value


class LogRedactor:
    """A structlog processor: masks credentials in every string of every event, and any literal secret
    value registered with :meth:`add` (secrets shorter than ``min_length`` are left to the URL rules,
    since masking every "ab" in a log would make it unreadable without protecting much)."""

    def __init__(self, min_length: int = 4):
        self.min_length = min_length
        self._secrets: list[str] = []

    def add(self, secrets: Iterable[str]) -> None:
        known = set(self._secrets) | {s for s in secrets if s and len(s) >= self.min_length}
        self._secrets = sorted(known, key=len, reverse=True)  # longest first: no partial leftovers

    def text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return redact_text(text)

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (list, tuple)):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, BaseException):
            return self.text(repr(value))
        return value

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        return {key: self.value(item) for key, item in event.items()}
