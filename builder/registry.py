"""An OCI registry, over its HTTP API (distribution-spec v2).

Used for what the Docker engine does not tell: whether a tag already exists and which image it
holds, so a version is never overwritten with different content. Credentials come from the
Docker client's config (the same place `docker login` writes); the Bearer token challenge of
GHCR, Docker Hub and ECR is followed (https://distribution.github.io/distribution/spec/auth/token/).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import requests

from builder import reach
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


SMOKE_MEDIA_TYPE = "application/vnd.builder.smoke.v1+json"


def smoke_tag(digest: str) -> str:
    """Where the smoke result of image `digest` is kept, beside it (cosign's `sha256-HEX.sig` naming)."""
    return f"{digest.replace(':', '-')}.smoke"


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

    def _authenticate(self, challenge: str, name: str, write: bool = False) -> None:
        match = re.match(r"Bearer\s+(.*)", challenge, re.IGNORECASE)
        if not match:
            return
        params = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if "realm" not in params:
            return
        actions = "pull,push,delete" if write else "pull"
        query = {"service": params.get("service", ""), "scope": f"repository:{name}:{actions}"}
        realm = params["realm"]
        try:
            with reach.reaching(f"the token service of {self.ref.host}", realm.split("?", 1)[0], reach.REGISTRY):
                response = self.session.get(realm, params=query, auth=self._credentials(), timeout=self.timeout)
        except requests.RequestException as exc:
            raise RegistryError(f"the token service at {realm} did not answer: {type(exc).__name__}: try again") from None
        if response.status_code != 200:
            raise RegistryError(
                f"{self.ref.host} refused a token for {name} ({response.status_code}): run `docker login {self.ref.host}`"
            )
        body = response.json()
        self._token = body.get("token") or body.get("access_token")

    def _request(self, method: str, url: str, name: str, headers: dict[str, str] | None = None,
                 data: bytes | None = None, write: bool = False) -> requests.Response:
        tried_token = False
        while True:
            sent = dict(headers or {})
            auth = None
            if self._token:
                sent["Authorization"] = f"Bearer {self._token}"
            else:
                auth = self._credentials()
            try:
                with reach.reaching("the registry", self.ref.base_url, reach.REGISTRY):
                    response = self.session.request(method, url, headers=sent, auth=auth, data=data, timeout=self.timeout)
            except requests.RequestException as exc:
                raise RegistryError(
                    f"the registry at {self.ref.base_url} did not answer {method} {url.split('/v2/', 1)[-1]}: "
                    f"{type(exc).__name__}: check that it is healthy and try again"
                ) from None
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status_code == 401 and challenge.lower().startswith("bearer") and not tried_token:
                tried_token = True
                self._authenticate(challenge, name, write)
                continue
            return response

    def _get(self, url: str, name: str, headers: dict[str, str]) -> requests.Response:
        return self._request("GET", url, name, headers)

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code in (401, 403):
            raise RegistryError(f"{self.ref.host} refused {what} ({response.status_code}): run `docker login {self.ref.host}`")
        if response.status_code != 200:
            raise RegistryError(f"{self.ref.host} answered {response.status_code} for {what}")

    def check(self) -> None:
        """Fail now, with one line, if the registry cannot be reached (before an hour of building)."""
        response = self._request("GET", f"{self.ref.base_url}/v2/", "")
        if response.status_code not in (200, 401):
            raise RegistryError(f"{self.ref.base_url}/v2/ answered {response.status_code}: is --registry a container registry?")

    def tags(self, name: str, page_size: int = 1000) -> list[str]:
        """Every tag of repository `name` (empty when the repository does not exist), following the
        `Link: <...>; rel="next"` pagination the distribution spec allows (Quay, Harbor use it)."""
        path = self.ref.path(name)
        url: str | None = f"{self.ref.base_url}/v2/{path}/tags/list?n={page_size}"
        tags: list[str] = []
        while url:
            response = self._get(url, path, {})
            if response.status_code == 404:
                return []
            self._check(response, f"the tags of {path}")
            tags.extend(response.json().get("tags") or [])
            match = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', response.headers.get("Link", ""))
            url = (match.group(1) if match.group(1).startswith("http") else self.ref.base_url + match.group(1)) \
                if match else None
        return sorted(set(tags))

    def config(self, name: str, reference: str) -> dict[str, Any] | None:
        """The image config (labels, history, diff ids) that a tag or digest points at."""
        image = self.image(name, reference)
        if image is None or image.config_digest is None:
            return None
        path = self.ref.path(name)
        response = self._get(f"{self.ref.base_url}/v2/{path}/blobs/{image.config_digest}", path, {})
        self._check(response, f"the config of {path}:{reference}")
        return response.json()

    def manifest(self, name: str, reference: str) -> tuple[bytes, str, str] | None:
        """(raw bytes, media type, digest) of a manifest, or None if there is none."""
        path = self.ref.path(name)
        response = self._get(f"{self.ref.base_url}/v2/{path}/manifests/{reference}", path, {"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        self._check(response, f"{path}:{reference}")
        digest = response.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(response.content).hexdigest()
        return response.content, response.headers.get("Content-Type", ""), digest

    def tag(self, name: str, digest: str, tag: str) -> None:
        """Point tag at the image digest (the manifest is re-put under the tag: no layer moves)."""
        found = self.manifest(name, digest)
        if found is None:
            raise RegistryError(f"{self.ref.repository(name)}@{digest} is not in the registry")
        body, media_type, _ = found
        path = self.ref.path(name)
        response = self._request("PUT", f"{self.ref.base_url}/v2/{path}/manifests/{tag}", path,
                                 {"Content-Type": media_type}, body, write=True)
        if response.status_code not in (200, 201):
            self._check(response, f"tagging {path}:{tag}")

    def delete(self, name: str, digest: str) -> None:
        """Delete a manifest by digest (every tag pointing at it goes with it)."""
        path = self.ref.path(name)
        response = self._request("DELETE", f"{self.ref.base_url}/v2/{path}/manifests/{digest}", path, write=True)
        if response.status_code == 405:
            raise RegistryError(f"{self.ref.host} does not allow deletes: enable storage.delete in its configuration")
        if response.status_code not in (200, 202, 404):
            self._check(response, f"deleting {path}@{digest}")

    def put_document(self, name: str, tag: str, media_type: str, document: dict[str, Any]) -> str:
        """Store a small JSON document as an OCI artifact under tag (its config blob); return its digest."""
        path = self.ref.path(name)
        blob = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        blob_digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        start = self._request("POST", f"{self.ref.base_url}/v2/{path}/blobs/uploads/", path, write=True)
        if start.status_code != 202:
            self._check(start, f"an upload to {path}")
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.ref.base_url + location
        joiner = "&" if "?" in location else "?"
        put = self._request("PUT", f"{location}{joiner}digest={blob_digest}", path,
                            {"Content-Type": "application/octet-stream"}, blob, write=True)
        if put.status_code != 201:
            self._check(put, f"the upload of {blob_digest} to {path}")
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": media_type, "digest": blob_digest, "size": len(blob)},
            "layers": [],
        }, separators=(",", ":")).encode()
        response = self._request("PUT", f"{self.ref.base_url}/v2/{path}/manifests/{tag}", path,
                                 {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, manifest, write=True)
        if response.status_code != 201:
            self._check(response, f"storing {path}:{tag}")
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def record_smoke(self, name: str, digest: str, document: dict[str, Any]) -> None:
        self.put_document(name, smoke_tag(digest), SMOKE_MEDIA_TYPE, document)

    def get_document(self, name: str, tag: str) -> dict[str, Any] | None:
        """The JSON document put_document stored under tag, or None."""
        return self.config(name, tag)

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
