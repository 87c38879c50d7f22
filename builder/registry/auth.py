"""Who the builder is to a registry: anonymous, basic (htpasswd) or a Bearer token.

Credentials come from $BUILDER_REGISTRY_USERNAME / $BUILDER_REGISTRY_PASSWORD when both are set
(CI), else from the Docker client's config, the same place `docker login` writes, including its
credential helpers (`credsStore`, `credHelpers`), under the name `docker login` files them by
(Docker Hub's, whichever of its host names was given, under https://index.docker.io/v1/). A registry says how it wants to be spoken to in
its 401 challenge: `Basic` gets the credentials, `Bearer` sends us to its token service
(https://distribution.github.io/distribution/spec/auth/token/) for a token scoped to the
repositories a request touches; a token is kept per scope until it expires, and asked for again
when the registry refuses it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from builder import reach
from builder.errors import RegistryError
from builder.redact import remember


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __post_init__(self) -> None:
        remember(self.password)  # never printed, echoed or recorded (builder/redact.py)

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def fingerprint(self) -> str:
        """Who these credentials are, without them: what a remembered mount source is filed under
        (moby mounts only from repositories pushed with the same credentials, moby/moby#26564)."""
        return hashlib.sha256(f"builder-mount\0{self.username}\0{self.password}".encode()).hexdigest()[:24]

    def engine_auth(self) -> dict[str, str]:
        """The auth_config the Docker SDK hands to the engine's own push."""
        return {"username": self.username, "password": self.password}


def find_credentials(host: str) -> Credentials | None:
    """`host`: the name `docker login` files the registry's credentials under (the profile's
    credential_host: "docker.io" for every Docker Hub name, which the Docker SDK looks up under
    https://index.docker.io/v1/, as `docker login` stores them)."""
    user, password = os.environ.get("BUILDER_REGISTRY_USERNAME"), os.environ.get("BUILDER_REGISTRY_PASSWORD")
    if user and password:
        return Credentials(user, password)
    from docker import auth

    try:
        entry = auth.load_config().resolve_authconfig(host) or {}
    except Exception:  # noqa: BLE001 - an unreadable config or a failing helper means no credentials
        return None
    entry = {key.lower(): value for key, value in entry.items()}  # helpers answer Username, config.json username
    if entry.get("username") and entry.get("password"):
        return Credentials(entry["username"], entry["password"])
    if entry.get("identitytoken"):  # helpers that hand out a refresh token use this user name
        return Credentials("<token>", entry["identitytoken"])
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """('bearer', {realm, service, scope...}) from a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def scope(path: str, *actions: str) -> str:
    return f"repository:{path}:{','.join(actions)}"


class Auth:
    """The Authorization header for a request, and what to do about a 401."""

    def __init__(self, host: str, session: requests.Session, timeout: float, credential_host: str | None = None) -> None:
        self.host = host
        self.credential_host = credential_host or host
        self.session = session
        self.timeout = timeout
        self.scheme: str | None = None  # learnt from the first challenge
        self.challenge: dict[str, str] = {}
        self._credentials: Credentials | None | bool = False  # False: not looked up yet
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._lock = threading.Lock()

    @property
    def credentials(self) -> Credentials | None:
        if self._credentials is False:
            self._credentials = find_credentials(self.credential_host)
        return self._credentials  # type: ignore[return-value]

    def header(self, scopes: tuple[str, ...]) -> dict[str, str]:
        if self.scheme == "basic" and self.credentials:
            return {"Authorization": self.credentials.basic()}
        if self.scheme == "bearer":
            with self._lock:
                token = self._token_for(scopes)
                if token is None:  # expired, or scopes not asked for yet: ask now, not after a 401
                    token = self._tokens[scopes] = self._fetch(self.challenge, scopes)
            return {"Authorization": f"Bearer {token[0]}"}
        return {}

    def _token_for(self, scopes: tuple[str, ...]) -> tuple[str, float] | None:
        """A live token covering `scopes` (one asked for with more scopes will do)."""
        now = time.monotonic()
        exact = self._tokens.get(scopes)
        if exact and exact[1] > now:
            return exact
        wanted = set(scopes)
        return next((t for s, t in self._tokens.items() if t[1] > now and wanted <= set(s)), None)

    def answer(self, response: requests.Response, scopes: tuple[str, ...], sent: dict[str, str]) -> None:
        """Get ready to retry after `response` (a 401), or raise the one line that says what to do."""
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        login = f"run `docker login {self.host}` (or set BUILDER_REGISTRY_USERNAME and BUILDER_REGISTRY_PASSWORD)"
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryError(f"{self.host} asks for a user name and password and none is configured: {login}")
            if self.scheme == "basic" and "Authorization" in sent:
                raise RegistryError(f"{self.host} refused the password of {self.credentials.username}: {login} again")
            self.scheme = "basic"
            return
        if scheme == "bearer" and "realm" in params:
            refused = self.scheme == "bearer" and "Authorization" in sent
            if refused and params.get("error") == "insufficient_scope":
                raise RegistryError(
                    f"{self.host} gives {self._who()} no {params.get('scope') or ', '.join(scopes)} access: "
                    f"check the account's permissions on the repository, or {login}"
                )
            self.scheme, self.challenge = "bearer", params
            with self._lock:
                if refused:  # expired or revoked: ask again, once
                    self._tokens.pop(scopes, None)
                self._tokens[scopes] = self._fetch(params, scopes)
            return
        raise RegistryError(f"{self.host} refused the request ({response.status_code}) and names no way to log in: {login}")

    def _who(self) -> str:
        return self.credentials.username if self.credentials else "anonymous users"

    def _fetch(self, params: dict[str, str], scopes: tuple[str, ...]) -> tuple[str, float]:
        realm = params["realm"]
        query: list[tuple[str, str]] = [("service", params.get("service", ""))]
        query += [("scope", s) for s in scopes]
        credentials = self.credentials
        try:
            with reach.reaching(f"the token service of {self.host}", realm.split("?", 1)[0], reach.REGISTRY):
                response = self.session.get(
                    realm, params=query, timeout=self.timeout,
                    headers={"Authorization": credentials.basic()} if credentials else {},
                )
        except requests.RequestException as exc:
            raise RegistryError(f"the token service at {realm} did not answer: {type(exc).__name__}: try again") from None
        if response.status_code in (401, 403):
            raise RegistryError(
                f"the token service of {self.host} refused {self._who()} ({response.status_code}): "
                f"run `docker login {self.host}` with an account that may use {', '.join(scopes)}"
            )
        if response.status_code != 200:
            raise RegistryError(f"the token service at {realm} answered {response.status_code}: try again later")
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            raise RegistryError(f"the token service at {realm} did not answer with JSON: is it a token service?") from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"the token service at {realm} answered without a token")
        remember(token)
        lifetime = float(body.get("expires_in") or 60)
        return token, time.monotonic() + max(lifetime - 10, lifetime / 2)
