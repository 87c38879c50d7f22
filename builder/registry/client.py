"""An OCI registry, over its HTTP API (distribution-spec v2).

Used for what the Docker engine does not tell (whether a tag exists and which image it holds, so
a version is never overwritten with different content), for small documents kept beside an image
(its smoke record), and for blob uploads (builder/registry/push.py). Who we are to the registry
is builder/registry/auth.py's business, and how a registry bends the spec is its profile's
(builder/registry/profiles.py). Requests whose body can be sent again are retried with backoff on
429, 5xx and dropped connections; a registry that cannot be connected to at all is one
`Unreachable` line at once, while a connection that breaks after the registry has answered is a
`Dropped` error the upload can resume from.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import requests

from builder import reach
from builder.errors import InputError, RegistryError
from builder.registry.auth import Auth, scope
from builder.registry.profiles import Profile, profile_for

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
_HOST = re.compile(r"(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+|\[[0-9a-f:]+\])(?::\d{1,5})?|[a-z0-9-]+:\d{1,5}")
_NAMESPACE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_RETRY_STATUS = (429, 500, 502, 503, 504)
TRANSIENT_STATUS = (408, *_RETRY_STATUS)

SMOKE_MEDIA_TYPE = "application/vnd.builder.smoke.v1+json"


def smoke_tag(digest: str) -> str:
    """Where the smoke result of image `digest` is kept, beside it (the OCI referrers tag scheme)."""
    return f"{digest.replace(':', '-')}.smoke"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Refused(RegistryError):
    """The registry answered a request with a status other than the one wanted."""

    def __init__(self, message: str, status: int, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body  # what it said, for limits named in it (a 413 or 416)


class MountRefused(RegistryError):
    """A cross-repository mount these credentials may not make: upload the blob instead."""


class Dropped(RegistryError):
    """The connection broke during a request, after the registry had answered others: worth
    resuming from what the registry holds, unlike a registry that cannot be reached at all."""


def transient(exc: BaseException) -> bool:
    """Whether a failed request is worth sending again: a dropped connection, a 408, 429 or 5xx."""
    return isinstance(exc, Dropped) or (isinstance(exc, Refused) and exc.status in TRANSIENT_STATUS)


@dataclass(frozen=True)
class RegistryRef:
    """HOST[:PORT][/NAMESPACE] as given to --registry."""

    host: str
    namespace: str | None = None

    @classmethod
    def parse(cls, text: str) -> "RegistryRef":
        if "@" in text:  # user:password@host: never echo it, never take it
            raise InputError("--registry must not carry credentials: run `docker login HOST`, or set "
                             "BUILDER_REGISTRY_USERNAME and BUILDER_REGISTRY_PASSWORD")
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
        """Where the API answers: docker.io's is registry-1.docker.io (see profiles.py)."""
        host = self.host.split(":")[0]
        loopback = host in ("localhost", "[::1]") or host.startswith("127.")
        return f"{'http' if loopback else 'https'}://{profile_for(self.host).api_host or self.host}"


@dataclass(frozen=True)
class RemoteImage:
    digest: str  # the manifest digest: what `REPO@sha256:...` pulls
    config_digest: str | None  # the image id: equal to the local image id for the same image


class RegistryClient:
    def __init__(self, ref: RegistryRef, session: requests.Session | None = None, timeout: float = 30,
                 attempts: int = 5, backoff: float = 0.5, profile: Profile | None = None) -> None:
        self.ref = ref
        self.session = session or requests.Session()
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.profile = profile or profile_for(ref.host)
        self.auth = Auth(ref.host, self.session, timeout, self.profile.credential_host or ref.host)
        self._answered = False  # after the first answer, a failed connection is worth a retry
        self._manifests: dict[tuple[str, str], tuple[bytes, str]] = {}  # by digest: never changes

    # -- requests ----------------------------------------------------------------------------------
    def url(self, path: str, rest: str) -> str:
        return f"{self.ref.base_url}/v2/{path}/{rest}" if path else f"{self.ref.base_url}/v2/"

    def request(self, method: str, url: str, scopes: tuple[str, ...], headers: dict[str, str] | None = None,
                data: Any = None, retry: bool = True, stream: bool = False,
                timeout: float | tuple[float, float] | None = None, refusal_ok: bool = False,
                redirects: bool = True) -> requests.Response:
        """Send one request, answering auth challenges. `retry`: the body can be sent again (bytes or
        nothing), so 429, 5xx and dropped connections are retried with backoff. `refusal_ok`: a
        401 that no login can answer (insufficient_scope: a mount from a repository these
        credentials cannot read) comes back as the answer instead of an error."""
        auth_tries = 0
        failures = 0
        while True:
            try:
                sent = {**(headers or {}), **self.auth.header(scopes)}
            except RegistryError as exc:
                if refusal_ok:  # the token service would not grant these scopes
                    raise MountRefused(str(exc)) from None
                raise
            try:
                response = self._send(method, url, sent, data, stream, timeout, redirects)
            except Dropped:
                if not retry or failures + 1 >= self.attempts:
                    raise
                failures += 1
                self._sleep(failures, None)
                continue
            self._answered = True
            if response.status_code == 401 and auth_tries < 2:
                auth_tries += 1
                try:
                    self.auth.answer(response, scopes, sent)
                except RegistryError:
                    if refusal_ok:
                        return response
                    raise
                if not retry and data is not None:
                    return response  # a streamed body is gone: the caller starts it again
                continue
            if response.status_code in _RETRY_STATUS and retry and failures + 1 < self.attempts:
                failures += 1
                self._sleep(failures, response.headers.get("Retry-After"))
                continue
            return response

    def _send(self, method: str, url: str, headers: dict[str, str], data: Any, stream: bool,
              timeout: float | tuple[float, float] | None, redirects: bool) -> requests.Response:
        """One HTTP request. No connection at all, before the registry ever answered: Unreachable.
        A connection that broke after it had answered: Dropped (the caller may resume)."""
        if self._answered:
            try:
                return self.session.request(method, url, headers=headers, data=data, stream=stream,
                                            timeout=timeout or self.timeout, allow_redirects=redirects)
            except requests.RequestException:
                raise Dropped(f"the connection to {self.ref.base_url} broke during {method} {_short(url)}: "
                              "check the network and the registry, and run the same command again") from None
        try:
            with reach.reaching("the registry", self.ref.base_url, reach.REGISTRY):
                return self.session.request(method, url, headers=headers, data=data, stream=stream,
                                            timeout=timeout or self.timeout, allow_redirects=redirects)
        except requests.RequestException as exc:
            raise RegistryError(
                f"the registry at {self.ref.base_url} did not answer {method} {_short(url)}: "
                f"{type(exc).__name__}: check that it is healthy and try again"
            ) from None

    def _sleep(self, failures: int, retry_after: str | None) -> None:
        if retry_after and retry_after.strip().isdigit():
            time.sleep(min(float(retry_after), 60.0))
            return
        time.sleep(random.uniform(0, min(self.backoff * 2 ** (failures - 1), 10.0)))

    def _scopes(self, path: str, write: bool = False, extra: Iterable[str] = ()) -> tuple[str, ...]:
        if not path:
            return ()
        return (scope(path, "pull", "push") if write else scope(path, "pull"), *extra)

    def check_response(self, response: requests.Response, what: str, ok: Iterable[int] = (200,)) -> None:
        if response.status_code in ok:
            return
        status = response.status_code
        try:
            body = response.text[:2000]
        except Exception:  # noqa: BLE001 - a body that cannot be read names no limit
            body = ""
        if status in (401, 403):
            raise Refused(
                f"{self.ref.host} refused {what} ({status}): run `docker login {self.ref.host}` "
                "with an account that may push there", status, body)
        detail = _error_detail(response)
        raise Refused(f"{self.ref.host} answered {status} for {what}{detail}", status, body)

    # -- reads -------------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail now, with one line, if the registry cannot be reached (before an hour of building).

        A registry answers /v2/ itself, with 200 or a 401 challenge, and says so
        (`Docker-Distribution-API-Version`, or a JSON body); a redirect, or a web page's 200
        (`https://docker.io/v2/` sends browsers to Docker Hub's site), is not a registry."""
        response = self.request("GET", self.url("", ""), (), redirects=False)
        where = f"{self.ref.base_url}/v2/"
        if response.is_redirect:
            raise RegistryError(f"{where} redirects to {response.headers.get('Location', '?')}, which a registry "
                                "does not do: is --registry a container registry? (Docker Hub is docker.io/NAMESPACE)")
        if response.status_code not in (200, 401):
            raise RegistryError(f"{where} answered {response.status_code}: is --registry a container registry?")
        if not _speaks_registry(response):
            raise RegistryError(f"{where} answered with a web page, not a registry's answer: is --registry a "
                                "container registry? (Docker Hub is docker.io/NAMESPACE)")

    def tags(self, name: str, page_size: int = 1000) -> list[str]:
        """Every tag of repository `name` (empty when the repository does not exist), following the
        `Link: <...>; rel="next"` pagination the distribution spec allows (Quay, Harbor use it)."""
        path = self.ref.path(name)
        url: str | None = self.url(path, f"tags/list?n={page_size}")
        tags: list[str] = []
        while url:
            response = self.request("GET", url, self._scopes(path))
            if response.status_code == 404:
                return []
            self.check_response(response, f"the tags of {path}")
            tags.extend(response.json().get("tags") or [])
            match = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', response.headers.get("Link", ""))
            url = (match.group(1) if match.group(1).startswith("http") else self.ref.base_url + match.group(1)) \
                if match else None
        return sorted(set(tags))

    def manifest(self, name: str, reference: str) -> tuple[bytes, str, str] | None:
        """(raw bytes, media type, digest) of a manifest, or None if there is none. A manifest asked
        for by digest never changes: one this client stored or read is not asked for again (a GET
        counts as a pull against Docker Hub's limits; a HEAD does not)."""
        path = self.ref.path(name)
        known = self._manifests.get((path, reference))
        if known is not None:
            return known[0], known[1], reference
        if not reference.startswith("sha256:") and self.manifest_digest(name, reference) is None:
            return None  # a HEAD first: a tag that is not there costs no counted GET
        response = self.request("GET", self.url(path, f"manifests/{reference}"), self._scopes(path),
                                {"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        self.check_response(response, f"{path}:{reference}")
        digest = sha256(response.content)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"{self.ref.host} sent {path}@{reference[:19]} with other content")
        self._manifests[(path, digest)] = (response.content, response.headers.get("Content-Type", ""))
        return response.content, response.headers.get("Content-Type", ""), digest

    def manifest_digest(self, name: str, reference: str) -> str | None:
        """The digest a tag (or digest) points at, or None if there is none: by HEAD, which Docker
        Hub does not count as a pull (a GET does: https://docs.docker.com/docker-hub/usage/pulls/),
        and by GET only where the HEAD answer carries no Docker-Content-Digest."""
        path = self.ref.path(name)
        response = self.request("HEAD", self.url(path, f"manifests/{reference}"), self._scopes(path),
                                {"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        self.check_response(response, f"{path}:{reference}")
        digest = response.headers.get("Docker-Content-Digest", "")
        if re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            return digest
        return reference if reference.startswith("sha256:") else self._digest_by_get(name, reference)

    def _digest_by_get(self, name: str, reference: str) -> str:
        path = self.ref.path(name)
        response = self.request("GET", self.url(path, f"manifests/{reference}"), self._scopes(path),
                                {"Accept": MANIFEST_TYPES})
        self.check_response(response, f"{path}:{reference}")
        return sha256(response.content)

    def image(self, name: str, reference: str) -> RemoteImage | None:
        """The image a tag (or digest) points at in repository `name`, or None if there is none."""
        found = self.manifest(name, reference)
        if found is None:
            return None
        body: dict[str, Any] = json.loads(found[0])
        config = body.get("config", {}).get("digest") if isinstance(body.get("config"), dict) else None
        return RemoteImage(digest=found[2], config_digest=config)

    def blob(self, name: str, digest: str) -> bytes:
        path = self.ref.path(name)
        response = self.request("GET", self.url(path, f"blobs/{digest}"), self._scopes(path))
        self.check_response(response, f"blob {digest[:19]} of {path}")
        if sha256(response.content) != digest:
            raise RegistryError(f"{self.ref.host} sent blob {digest[:19]} of {path} with other content")
        return response.content

    def config(self, name: str, reference: str) -> dict[str, Any] | None:
        """The image config (labels, history, diff ids) that a tag or digest points at."""
        image = self.image(name, reference)
        if image is None or image.config_digest is None:
            return None
        return json.loads(self.blob(name, image.config_digest))

    # -- blobs -------------------------------------------------------------------------------------
    def blob_size(self, path: str, digest: str) -> int | None:
        """The size of a blob the repository holds, or None."""
        response = self.request("HEAD", self.url(path, f"blobs/{digest}"), self._scopes(path, write=True))
        if response.status_code == 404:
            return None
        self.check_response(response, f"blob {digest[:19]} of {path}")
        return int(response.headers.get("Content-Length") or 0)

    def start_upload(self, path: str, mount: tuple[str, str] | None = None) -> tuple[str | None, dict[str, str]]:
        """Open an upload session: (its location, the answer's headers).

        With `mount` = (digest, from repository): location None when the registry mounted the
        blob (201). A registry that does not mount answers 202 with an upload session, which the
        caller must use rather than open another (ECR; the spec says so). A mount these
        credentials may not make (401 insufficient_scope on Docker Hub, 401 or 403 on Harbor for a
        project the user cannot see) raises MountRefused: the caller uploads instead."""
        query = f"?mount={mount[0]}&from={mount[1]}" if mount else ""
        extra = (scope(mount[1], "pull"),) if mount else ()
        response = self.request("POST", self.url(path, f"blobs/uploads/{query}"), self._scopes(path, True, extra),
                                {"Content-Length": "0"}, refusal_ok=mount is not None)
        if mount and response.status_code == 201:
            return None, dict(response.headers)
        if mount and response.status_code in (401, 403):
            raise MountRefused(f"{self.ref.host} refused to mount {mount[0][:19]} from {mount[1]} "
                               f"({response.status_code})")
        self.check_response(response, f"an upload to {path}", ok=(202,))
        return self._location(response), dict(response.headers)

    def _location(self, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.ref.host} opened an upload without saying where: is it a container registry?")
        return self.ref.base_url + location if location.startswith("/") else location

    def upload_offset(self, path: str, location: str) -> int | None:
        """Bytes an open upload session holds, or None if the session is gone (or, on a registry
        whose Range cannot be trusted, unknown)."""
        if not self.profile.trust_range:
            return None
        response = self.request("GET", location, self._scopes(path, write=True))
        if response.status_code not in (200, 204):
            return None
        match = re.fullmatch(r"(?:bytes=)?0-(\d+)", response.headers.get("Range", "").strip())
        # Distribution answers "0-0" for a session that holds nothing (and would for one byte,
        # which no push leaves: a chunk is never that small); the spec's inclusive range cannot say.
        return int(match.group(1)) + 1 if match and match.group(1) != "0" else 0

    def patch(self, path: str, location: str, body: Any, start: int, length: int | None,
              ranged: bool = True) -> str:
        """Send bytes [start, start+length) of a blob to an upload session; return the next location.
        `ranged` False: no Content-Range (a "streamed" PATCH, as `docker push` sends each layer);
        `length` None: a body of unknown length, sent with chunked transfer encoding."""
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers["Content-Length"] = str(length)
            if ranged:
                headers["Content-Range"] = f"{start}-{start + length - 1}"
        response = self.request("PATCH", location, self._scopes(path, write=True), headers, body, retry=False,
                                timeout=(self.timeout, 600))
        accepted = (201, 202) if self.profile.patch_answers_created else (202,)
        self.check_response(response, f"a chunk of an upload to {path}", ok=accepted)
        return self._location(response) if response.headers.get("Location") else location

    def finish(self, path: str, location: str, digest: str, body: Any = None, length: int = 0,
               start: int | None = None) -> None:
        """Close an upload session as blob `digest`, sending `body` (`length` bytes) with it;
        `start`: where those bytes go in the blob, when they are its last part (Content-Range)."""
        joiner = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        if start is not None and length:
            headers["Content-Range"] = f"{start}-{start + length - 1}"
        replayable = body is None or isinstance(body, bytes)
        response = self.request("PUT", f"{location}{joiner}digest={digest}", self._scopes(path, write=True), headers,
                                body, retry=replayable, timeout=(self.timeout, 600))
        self.check_response(response, f"the upload of {digest[:19]} to {path}", ok=(201,))

    def put_blob(self, path: str, data: bytes) -> str:
        """Upload a small blob unless the repository has it; return its digest."""
        digest = sha256(data)
        if self.blob_size(path, digest) is None:
            location, _ = self.start_upload(path)
            assert location is not None
            self.finish(path, location, digest, data, len(data))
        return digest

    def put_manifest(self, name: str, reference: str, body: bytes, media_type: str) -> str:
        path = self.ref.path(name)
        response = self.request("PUT", self.url(path, f"manifests/{reference}"), self._scopes(path, write=True),
                                {"Content-Type": media_type}, body)
        self.check_response(response, f"storing {path}:{reference}", ok=(200, 201))
        digest = sha256(body)
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != digest:
            raise RegistryError(f"{self.ref.host} stored {path}:{reference} as {answered}, not {digest}: it rewrote the manifest")
        self._manifests[(path, digest)] = (body, media_type)
        return digest

    # -- tags, deletes, documents ------------------------------------------------------------------
    def tag(self, name: str, digest: str, tag: str) -> None:
        """Point tag at the image digest (the manifest is re-put under the tag: no layer moves)."""
        found = self.manifest(name, digest)
        if found is None:
            raise RegistryError(f"{self.ref.repository(name)}@{digest} is not in the registry")
        body, media_type, _ = found
        self.put_manifest(name, tag, body, media_type)

    def delete(self, name: str, digest: str) -> None:
        """Delete a manifest by digest (every tag pointing at it goes with it)."""
        path = self.ref.path(name)
        response = self.request("DELETE", self.url(path, f"manifests/{digest}"), self._scopes(path, write=True))
        if response.status_code == 405:
            raise RegistryError(f"{self.ref.host} does not allow deletes: enable storage.delete in its configuration")
        self.check_response(response, f"deleting {path}@{digest}", ok=(200, 202, 404))

    def put_document(self, name: str, tag: str, media_type: str, document: dict[str, Any],
                     subject: dict[str, Any] | None = None) -> str:
        """Store a small JSON document under tag; return the manifest's digest.

        As an OCI 1.1 artifact (`artifactType`, the empty config, the document as its one layer,
        `subject` naming the image it is about, so registries with the referrers API list it);
        a registry that refuses that form gets the older one, the document as the config blob."""
        path = self.ref.path(name)
        blob = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        blob_digest = self.put_blob(path, blob)
        empty = self.put_blob(path, EMPTY_BLOB)
        modern: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": media_type,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": len(EMPTY_BLOB)},
            "layers": [{"mediaType": media_type, "digest": blob_digest, "size": len(blob)}],
        }
        if subject:
            modern["subject"] = subject
        try:
            return self.put_manifest(name, tag, _canonical(modern), OCI_MANIFEST)
        except RegistryError as exc:
            if "answered 400" not in str(exc) and "answered 415" not in str(exc):
                raise
        legacy = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                  "config": {"mediaType": media_type, "digest": blob_digest, "size": len(blob)}, "layers": []}
        return self.put_manifest(name, tag, _canonical(legacy), OCI_MANIFEST)

    def get_document(self, name: str, tag: str) -> dict[str, Any] | None:
        """The JSON document put_document stored under tag (either form), or None."""
        found = self.manifest(name, tag)
        if found is None:
            return None
        body = json.loads(found[0])
        config = body.get("config") or {}
        if config.get("mediaType") == OCI_EMPTY and body.get("layers"):
            return json.loads(self.blob(name, body["layers"][0]["digest"]))
        return json.loads(self.blob(name, config["digest"])) if config.get("digest") else None

    def record_smoke(self, name: str, digest: str, document: dict[str, Any]) -> None:
        subject = None
        found = self.manifest(name, digest)
        if found is not None:
            subject = {"mediaType": found[1].split(";")[0] or OCI_MANIFEST, "digest": digest, "size": len(found[0])}
        self.put_document(name, smoke_tag(digest), SMOKE_MEDIA_TYPE, document, subject)


def _speaks_registry(response: requests.Response) -> bool:
    """Whether a /v2/ answer comes from a registry rather than a web server."""
    if response.headers.get("Docker-Distribution-API-Version", "").startswith("registry/2"):
        return True
    if response.status_code == 401 and response.headers.get("WWW-Authenticate"):
        return True
    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return kind in ("", "application/json") and not response.content.lstrip().startswith(b"<")


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _short(url: str) -> str:
    return url.split("/v2/", 1)[-1].split("?", 1)[0]


def _error_detail(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        return ""
    if not errors:
        return ""
    first = errors[0]
    return f": {first.get('code', '')} {first.get('message', '')}".rstrip()
