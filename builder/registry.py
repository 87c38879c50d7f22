"""An OCI registry, over its HTTP API (distribution-spec v2).

Used for what the Docker engine does not tell: whether a tag already exists and which image it
holds, so a version is never overwritten with different content. Credentials come from the
Docker client's config (the same place `docker login` writes); the Bearer token challenge of
GHCR, Docker Hub and ECR is followed (https://distribution.github.io/distribution/spec/auth/token/).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import requests

from builder.errors import InputError, RegistryError

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
_HOST = re.compile(r"(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+|\[[0-9a-f:]+\])(?::\d{1,5})?|[a-z0-9-]+:\d{1,5}")
_NAMESPACE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")


@dataclass(frozen=True)
class RegistryRef:
    """HOST[:PORT][/NAMESPACE] as given to --registry."""

    host: str
    namespace: str | None = None

    @classmethod
    def parse(cls, text: str) -> "RegistryRef":
        host, _, namespace = text.strip().rstrip("/").partition("/")
        if not _HOST.fullmatch(host) or (namespace and not _NAMESPACE.fullmatch(namespace)):
            raise InputError(
                f"--registry {text!r}: expected HOST[:PORT][/NAMESPACE] in lowercase, e.g. ghcr.io/acme or 127.0.0.1:5000"
            )
        return cls(host, namespace or None)

    def repository(self, name: str) -> str:
        return f"{self.host}/{self.namespace}/{name}" if self.namespace else f"{self.host}/{name}"

    def path(self, name: str) -> str:
        """The repository name as the registry API sees it (no host)."""
        return f"{self.namespace}/{name}" if self.namespace else name

    @property
    def base_url(self) -> str:
        host = self.host.split(":")[0]
        loopback = host in ("localhost", "[::1]") or host.startswith("127.")
        return f"{'http' if loopback else 'https'}://{self.host}"


@dataclass(frozen=True)
class RemoteImage:
    digest: str  # the manifest digest: what `REPO@sha256:...` pulls
    config_digest: str | None  # the image id: equal to the local image id for the same image


class RegistryClient:
    def __init__(self, ref: RegistryRef, session: requests.Session | None = None, timeout: float = 30) -> None:
        self.ref = ref
        self.session = session or requests.Session()
        self.timeout = timeout
        self._token: str | None = None

    def _credentials(self) -> tuple[str, str] | None:
        from docker import auth

        try:
            config = auth.load_config()
            entry = config.resolve_authconfig(self.ref.host) or {}
        except Exception:  # noqa: BLE001 - an unreadable docker config means anonymous access
            return None
        if entry.get("username") and entry.get("password"):
            return entry["username"], entry["password"]
        return None

    def _authenticate(self, challenge: str, name: str) -> None:
        match = re.match(r"Bearer\s+(.*)", challenge, re.IGNORECASE)
        if not match:
            return
        params = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if "realm" not in params:
            return
        query = {"service": params.get("service", ""), "scope": params.get("scope", f"repository:{name}:pull")}
        response = self.session.get(params["realm"], params=query, auth=self._credentials(), timeout=self.timeout)
        if response.status_code != 200:
            raise RegistryError(
                f"{self.ref.host} refused a token for {name} ({response.status_code}): run `docker login {self.ref.host}`"
            )
        body = response.json()
        self._token = body.get("token") or body.get("access_token")

    def _get(self, url: str, name: str, headers: dict[str, str]) -> requests.Response:
        for _ in range(2):
            sent = dict(headers)
            auth = None
            if self._token:
                sent["Authorization"] = f"Bearer {self._token}"
            else:
                auth = self._credentials()
            try:
                response = self.session.get(url, headers=sent, auth=auth, timeout=self.timeout)
            except requests.RequestException as exc:
                raise RegistryError(
                    f"cannot reach the registry at {self.ref.base_url}: {type(exc).__name__}: check that it is up "
                    f"and --registry is right"
                ) from None
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status_code == 401 and challenge.lower().startswith("bearer") and not self._token:
                self._authenticate(challenge, name)
                continue
            return response
        return response

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code in (401, 403):
            raise RegistryError(f"{self.ref.host} refused {what} ({response.status_code}): run `docker login {self.ref.host}`")
        if response.status_code != 200:
            raise RegistryError(f"{self.ref.host} answered {response.status_code} for {what}")

    def tags(self, name: str) -> list[str]:
        """Every tag of repository `name` (empty when the repository does not exist)."""
        path = self.ref.path(name)
        response = self._get(f"{self.ref.base_url}/v2/{path}/tags/list", path, {})
        if response.status_code == 404:
            return []
        self._check(response, f"the tags of {path}")
        return sorted(response.json().get("tags") or [])

    def config(self, name: str, reference: str) -> dict[str, Any] | None:
        """The image config (labels, history, diff ids) that a tag or digest points at."""
        image = self.image(name, reference)
        if image is None or image.config_digest is None:
            return None
        path = self.ref.path(name)
        response = self._get(f"{self.ref.base_url}/v2/{path}/blobs/{image.config_digest}", path, {})
        self._check(response, f"the config of {path}:{reference}")
        return response.json()

    def image(self, name: str, reference: str) -> RemoteImage | None:
        """The image a tag (or digest) points at in repository `name`, or None if there is none."""
        path = self.ref.path(name)
        url = f"{self.ref.base_url}/v2/{path}/manifests/{reference}"
        response = self._get(url, path, {"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        self._check(response, f"{path}:{reference}")
        digest = response.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(response.content).hexdigest()
        body: dict[str, Any] = response.json()
        config = body.get("config", {}).get("digest") if isinstance(body.get("config"), dict) else None
        return RemoteImage(digest=digest, config_digest=config)
