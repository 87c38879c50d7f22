"""Secrets out of everything the builder prints, logs or records.

The builder knows secrets it must use but never show: the Hub token, credentials in a mirror's
URL (`https://user:pass@mirror/`, `?token=`), a proxy's, a registry's password, a pip index's
credentials. A `Redactor` is told each one as it becomes known and replaces it with `***` in any
text; it also masks what looks like a credential even when nobody told it (a URL's userinfo, a
token-like query parameter, an Authorization header's value, a Hub token's shape).

Standard library only: this module is copied into the weights build stage with builder.fetch,
whose lines cross into the host's build log and ledger.

Where it is applied, so that no path is missed: the fetch stage redacts its own log, attempt and
error lines; the host redacts every build log line it echoes (builder.docker), every ledger row
it writes (builder.ledger), and the CLI's stdout and stderr as a last guard (builder.cli). The
host's secrets are remembered process-wide (`remember`, `remember_url`) where they are learned:
a Redactor holds strings to hide, not a client, and every output path of the process must see
the same set.
"""

from __future__ import annotations

import configparser
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

REDACTED = "***"
# Shorter strings would mask ordinary text everywhere; a URL's userinfo and token-like query
# values are still masked by shape whatever their length.
MIN_SECRET_LENGTH = 4
_SENSITIVE_NAME = re.compile(
    r"(?i)(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|apikey|access[_-]?key|auth|credential|signature|^sig$|^key$)"
)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@?#'\"<>]+)@")
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z0-9_.\-]+)=(?P<value>[^&#\s'\"<>]*)")
_AUTH_HEADER = re.compile(r"(?i)(?P<lead>\b(?:proxy-)?authorization\s*[:=]\s*(?:(?:bearer|basic|token)\s+)?)(?P<value>[^\s,;'\"]+)")
_HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
# Environment variables whose values are credentials or URLs that may carry them.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "RUNPOD_API_KEY", "BUILDER_REGISTRY_PASSWORD")
URL_ENV = ("HF_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
           "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS")


def _mask_query(match: re.Match) -> str:
    if _SENSITIVE_NAME.search(match["name"]) and match["value"]:
        return f"{match['lead']}{match['name']}={REDACTED}"
    return match[0]


def mask_shapes(text: str) -> str:
    """Mask what looks like a credential: a URL's userinfo, token-like query values, an
    Authorization header's value, a Hub token."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _QUERY_PARAM.sub(_mask_query, text)
    text = _AUTH_HEADER.sub(lambda m: f"{m['lead']}{REDACTED}", text)
    return _HUB_TOKEN.sub(REDACTED, text)


def redact_url(url: str) -> str:
    """url as it may be shown: no userinfo, no token-like query values."""
    return mask_shapes(url)


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries: its password (or a user name standing alone, as tokens
    often do), and the values of token-like query parameters."""
    try:
        parsed = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return []
    found: list[str] = []
    if parsed.password:
        found.append(parsed.password)
    elif parsed.username:
        found.append(parsed.username)
    for name, value in urllib.parse.parse_qsl(parsed.query, keep_blank_values=False):
        if _SENSITIVE_NAME.search(name):
            found.append(value)
    return found


class Redactor:
    """Replaces every secret it was told (and every credential-shaped string) with `***`."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if not secret:
            return
        forms = {secret, secret.strip(), urllib.parse.quote(secret, safe=""), urllib.parse.unquote(secret)}
        with self._lock:
            self._secrets |= {f for f in forms if len(f) >= MIN_SECRET_LENGTH}

    def add_url(self, url: str | None) -> None:
        for secret in url_secrets(url or ""):
            self.add(secret)

    def add_pip_conf(self, path: Path) -> None:
        """The index URLs of a pip.conf (index-url, extra-index-url, find-links, any section)."""
        parser = configparser.RawConfigParser(strict=False)
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error, UnicodeDecodeError):
            return
        for section in parser.sections():
            for key in ("index-url", "extra-index-url", "find-links", "index_url", "extra_index_url"):
                for url in (parser.get(section, key, fallback="") or "").split():
                    self.add_url(url)

    def add_environment(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        for name in SECRET_ENV:
            self.add(env.get(name))
        for name in URL_ENV:
            for url in (env.get(name) or "").split():
                self.add_url(url)

    @property
    def secrets(self) -> list[str]:
        """Longest first, so a secret that contains another is replaced whole."""
        with self._lock:
            return sorted(self._secrets, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return mask_shapes(text)


# The host process's secrets (see the module docstring for why one set per process).
SECRETS = Redactor()


def remember(secret: str | None) -> None:
    SECRETS.add(secret)


def remember_url(url: str | None) -> None:
    SECRETS.add_url(url)


def redact(text: str | None) -> str | None:
    """text without any secret this process knows, or None."""
    return None if text is None else SECRETS(text)
