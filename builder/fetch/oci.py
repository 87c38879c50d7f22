"""Weights files from the registry weights store, for the fetch engine: standard library only.

The counterpart of builder/registry/weights.py: a file pinned by sha256 is looked up as the
artifact tagged `sha256-<sha>` in the repository an `oci://HOST[:PORT]/REPOSITORY` mirror names;
its one layer is either the file itself or a tar layer holding it (annotation
`io.builder.weights.member`), streamed out as it arrives. The caller hashes and checks it like
any download. A registry's Bearer challenge is answered with a pull token (credentials, when
given, from the Docker config or BUILDER_REGISTRY_*), asked for again before it expires (Docker
Hub's live 300 s, moby/moby#29257; the token spec's default is 60 s) and once more when the
registry refuses it; a redirect to another host (object storage) goes without them.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

RAW_FILE = "application/vnd.builder.weights.file.v1"
MEMBER = "io.builder.weights.member"
_ACCEPT = "application/vnd.oci.image.manifest.v1+json"
BLOCK = 1024 * 1024


class NotInStore(Exception):
    """The registry holds no artifact for this file (a miss, not a failure)."""


class StoreError(Exception):
    """The registry answered, but not with the file: the message says how."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, D102
        return None


def parse(url: str) -> tuple[str, str]:
    """(base URL, repository) of oci://HOST[:PORT]/REPOSITORY; loopback hosts speak plain HTTP."""
    rest = url.removeprefix("oci://").strip("/")
    host, _, repository = rest.partition("/")
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    plain = name in ("localhost", "[::1]") or name.startswith("127.")
    return f"{'http' if plain else 'https'}://{host}", repository


class OciStore:
    def __init__(self, url: str, credentials: tuple[str, str] | None = None, timeout: float = 60.0,
                 context: ssl.SSLContext | None = None) -> None:
        self.base, self.repository = parse(url)
        self.credentials = credentials
        self.timeout = timeout
        self.token: str | None = None  # None: not asked yet; "": basic auth
        self.expires = 0.0  # monotonic time after which the token is asked for again
        self.challenge = ""
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)

    def _open(self, url: str, accept: str | None = None, hops: int = 0, refreshed: bool = False):
        headers = {"Accept": accept} if accept else {}
        same_host = urllib.parse.urlsplit(url).netloc == urllib.parse.urlsplit(self.base).netloc
        if same_host and self.token and time.monotonic() >= self.expires:
            self._answer(self.challenge)  # about to expire: a new one before the request, not after a 401
        if same_host and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif same_host and self.credentials and self.token == "":  # basic auth, learnt from a challenge
            user, password = self.credentials
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        try:
            return self.opener.open(urllib.request.Request(url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and hops < 5 and exc.headers.get("Location"):
                return self._open(urllib.parse.urljoin(url, exc.headers["Location"]), accept, hops + 1)
            if exc.code == 401 and same_host and (self.token is None or (self.token and not refreshed)):
                self._answer(exc.headers.get("WWW-Authenticate", ""))  # first contact, or a token refused
                return self._open(url, accept, hops, refreshed=True)
            raise

    def _answer(self, challenge: str) -> None:
        scheme, _, rest = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if scheme.lower() == "basic":
            if not self.credentials:
                raise StoreError(f"{self.base} asks for a password and the build was given none (registry_auth secret)")
            self.token = ""
            return
        if scheme.lower() != "bearer" or "realm" not in params:
            raise StoreError(f"{self.base} refused access and names no way to log in")
        self.challenge = challenge
        query = urllib.parse.urlencode({"service": params.get("service", ""),
                                        "scope": f"repository:{self.repository}:pull"})
        request = urllib.request.Request(f"{params['realm']}?{query}")
        if self.credentials:
            user, password = self.credentials
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            raise StoreError(f"the token service of {self.base} refused a pull token ({exc.code})") from None
        self.token = body.get("token") or body.get("access_token") or ""
        lifetime = float(body.get("expires_in") or 60)
        self.expires = time.monotonic() + max(lifetime - 10, lifetime / 2)

    def open(self, sha256: str) -> tuple[Iterator[bytes], int]:
        """(the file's bytes, as they arrive; its size) for the file with this sha256."""
        try:
            response = self._open(f"{self.base}/v2/{self.repository}/manifests/sha256-{sha256}", _ACCEPT)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise NotInStore(sha256) from None
            raise StoreError(f"{self.base} answered {exc.code} for the artifact of {sha256[:12]}") from None
        with response:
            manifest = json.load(response)
        layers = manifest.get("layers") or []
        if len(layers) != 1:
            raise StoreError(f"the artifact of {sha256[:12]} in {self.repository} has {len(layers)} layers, not 1")
        layer = layers[0]
        size = int((manifest.get("annotations") or {}).get("io.builder.weights.size", -1))
        try:
            blob = self._open(f"{self.base}/v2/{self.repository}/blobs/{layer['digest']}")
        except urllib.error.HTTPError as exc:
            raise StoreError(f"{self.base} answered {exc.code} for blob {layer['digest'][:19]}") from None
        if layer.get("mediaType") == RAW_FILE:
            return _chunks(blob), int(layer["size"])
        member = (layer.get("annotations") or {}).get(MEMBER)
        if not member:
            raise StoreError(f"the artifact of {sha256[:12]} names no file inside its layer")
        # "r|*": plain or gzip, whichever the layer is (OCI or Docker media types alike).
        return _member(blob, "r|*", member), size


def _chunks(response) -> Iterator[bytes]:
    with response:
        while chunk := response.read(BLOCK):
            yield chunk


def _member(response, mode: str, name: str) -> Iterator[bytes]:
    with response, tarfile.open(fileobj=response, mode=mode) as archive:
        for entry in archive:
            if entry.name.lstrip("./") == name and entry.isfile():
                handle = archive.extractfile(entry)
                assert handle is not None
                while chunk := handle.read(BLOCK):
                    yield chunk
                return
    raise StoreError(f"{name} is not in its layer")
