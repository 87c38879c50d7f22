"""A registry that answers the way GHCR, Docker Hub, ECR or a registry without mounts does.

A streaming reverse proxy in front of the real distribution registry (Debian's docker-registry):
distribution stores, hashes and serves every byte; the proxy changes only what the hosted
registries are reported to do differently, each behaviour a switch, each from a public report
(the same ones builder/registry/profiles.py cites):

- GHCR: a PATCH (or PUT) with Content-Range whose body is over 4 MiB is refused with 416
  REQUESTED_RANGE_NOT_SATISFIABLE "the request body is too large and exceeds the maximum
  permissible limit of 4.00MiB" (oras-project/rust-oci-client#35, wasmCloud/wash#268,
  ocx-sh/ocx#237); one PATCH without Content-Range, `docker push`'s way, goes through whatever
  its size (cirruslabs/tart#179); a blob over 10 GB is refused.
- Docker Hub: token auth is distribution's own (tests/registry_auth.py's token service, 300 s
  tokens); a mount from a repository the token does not cover is distribution's 401
  insufficient_scope; every manifest GET that serves a manifest is counted, as Docker Hub counts
  pulls (a HEAD is not).
- ECR: no cross-repository mounts (the mount parameters are dropped, so the POST opens an upload
  session: 202); a PATCH answers 201; its Range stops at the first part (cirruslabs/tart#273,
  aws/containers-roadmap#2831); a part under 5 MiB that is not the last is refused
  (LayerPartTooSmallException); an empty closing PUT after ranged PATCHes fails with a bare 500
  (cirruslabs/tart#159).
- A registry without mounts: the mount parameters dropped, nothing else.

Faults for the resume tests: cut the Nth PATCH halfway (the proxy reads half its body, then
closes the connection; the registry never sees it), or answer it 502.
The log records each request (method, path, Content-Range, length, status), the upload sessions
opened and the digest each was closed with.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

MIB = 1024 * 1024
GHCR_TOO_LARGE = json.dumps({"errors": [{"code": "REQUESTED_RANGE_NOT_SATISFIABLE", "message":
                             "the request body is too large and exceeds the maximum permissible limit of 4.00MiB"}]}).encode()
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
        "proxy-connection"}
_UPLOAD = re.compile(r"/v2/(.+)/blobs/uploads/([^/?]+)")


@dataclass
class Behaviour:
    max_ranged_body: int | None = None  # GHCR: 4 MiB
    max_blob: int | None = None  # GHCR: 10 GB
    mounts: bool = True
    patch_created: bool = False  # ECR: PATCH answers 201
    stale_range: bool = False  # ECR: Range stops at the first part
    min_part: int = 0  # ECR: 5 MiB, but the last part
    empty_put_after_ranges_fails: bool = False  # ECR
    cut_patch: int | None = None  # cut the Nth PATCH (1-based) halfway
    fail_patch: int | None = None  # answer the Nth PATCH 502
    keep_bodies: bool = False


def ghcr() -> Behaviour:
    return Behaviour(max_ranged_body=4 * MIB, max_blob=10 * 10**9)


def ecr() -> Behaviour:
    return Behaviour(mounts=False, patch_created=True, stale_range=True, min_part=5 * MIB,
                     empty_put_after_ranges_fails=True)


def no_mounts() -> Behaviour:
    return Behaviour(mounts=False)


def dockerhub() -> Behaviour:
    return Behaviour()


@dataclass
class _Upload:
    parts: list[int] = field(default_factory=list)  # ranged PATCH bodies, in order
    received: int = 0
    first_range: str | None = None
    committed: str | None = None


@dataclass
class Log:
    rules: Behaviour = field(default_factory=Behaviour)
    requests: list[dict] = field(default_factory=list)
    uploads: dict[str, _Upload] = field(default_factory=dict)  # upload id -> what it got
    manifest_gets: int = 0
    patches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self, rules: Behaviour) -> None:
        """From now on, answer as `rules` say, with an empty log (the same host, another registry's manners)."""
        with self.lock:
            self.rules, self.requests, self.uploads, self.manifest_gets, self.patches = rules, [], {}, 0, 0

    def sessions(self, repository: str) -> list[_Upload]:
        prefix = f"{repository}/"
        return [u for key, u in self.uploads.items() if key.startswith(prefix)]


def _read_body(handler: BaseHTTPRequestHandler) -> Iterator[bytes]:
    """The request body as it arrives: Content-Length or chunked transfer encoding."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return
            left = size
            while left:
                piece = handler.rfile.read(min(left, MIB))
                if not piece:
                    raise ConnectionError("body cut short")
                left -= len(piece)
                yield piece
            handler.rfile.readline()
        return
    left = int(handler.headers.get("Content-Length") or 0)
    while left:
        piece = handler.rfile.read(min(left, MIB))
        if not piece:
            raise ConnectionError("body cut short")
        left -= len(piece)
        yield piece


@contextmanager
def registry_standin(upstream: str, behaviour: Behaviour | None = None) -> Iterator[tuple[str, Log]]:
    """A proxy on 127.0.0.1:PORT in front of the registry at `upstream` (HOST:PORT), answering as
    `behaviour` says; yields (its HOST:PORT, the log)."""
    log = Log(rules=behaviour or Behaviour())
    host, port = upstream.rsplit(":", 1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        @property
        def rules(self) -> Behaviour:
            return log.rules

        def log_message(self, *args) -> None:
            pass

        # -- answering ourselves ----------------------------------------------------------------
        def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            for _ in _read_body(self):  # the client sent it: read it, as a front end would
                pass
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _cut(self) -> None:
            """Read half the body, then drop the connection: the registry never hears of it."""
            half = int(self.headers.get("Content-Length") or 2 * MIB) // 2
            got = 0
            for piece in _read_body(self):
                got += len(piece)
                if got >= half:
                    break
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        # -- the rules --------------------------------------------------------------------------
        def _rules(self, entry: dict, upload: _Upload | None) -> bool:
            """Answer here when a rule says so; True if answered."""
            length = int(self.headers.get("Content-Length") or -1)
            ranged = bool(self.headers.get("Content-Range"))
            if self.command == "PATCH":
                with log.lock:
                    log.patches += 1
                    nth = log.patches
                if self.rules.cut_patch == nth:
                    entry["status"] = "cut"
                    self._cut()
                    return True
                if self.rules.fail_patch == nth:
                    entry["status"] = 502
                    self._answer(502)
                    return True
            if self.command in ("PATCH", "PUT") and ranged and self.rules.max_ranged_body and length > self.rules.max_ranged_body:
                entry["status"] = 416
                self._answer(416, GHCR_TOO_LARGE)
                return True
            if upload is not None and self.rules.max_blob and upload.received + max(length, 0) > self.rules.max_blob:
                entry["status"] = 400
                self._answer(400, json.dumps({"errors": [{"code": "BLOB_UPLOAD_INVALID",
                                                          "message": "layer exceeds the size limit"}]}).encode())
                return True
            if upload is not None and self.command in ("PATCH", "PUT") and length != 0 and self.rules.min_part \
                    and any(part < self.rules.min_part for part in upload.parts):
                entry["status"] = 400
                self._answer(400, json.dumps({"errors": [{"code": "LAYER_PART_TOO_SMALL",
                                                          "message": "Layer parts must be at least 5 MiB in size"}]}).encode())
                return True
            if upload is not None and self.command == "PUT" and length <= 0 and upload.parts \
                    and self.rules.empty_put_after_ranges_fails:
                entry["status"] = 500
                self._answer(500)
                return True
            return False

        def _path(self) -> str:
            if self.command == "POST" and not self.rules.mounts and "mount=" in self.path:
                parts = urlsplit(self.path)
                query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("mount", "from")]
                return parts.path + (f"?{urlencode(query)}" if query else "")
            return self.path

        def _handle(self) -> None:
            entry = {"method": self.command, "path": self.path, "range": self.headers.get("Content-Range"),
                     "length": int(self.headers.get("Content-Length") or -1), "status": None,
                     "chunked": self.headers.get("Transfer-Encoding", "").lower() == "chunked"}
            with log.lock:
                log.requests.append(entry)
            match = _UPLOAD.match(urlsplit(self.path).path)
            key = f"{match.group(1)}/{match.group(2)}" if match else None
            upload = log.uploads.get(key) if key else None
            if self._rules(entry, upload):
                return
            self._forward(entry, key, upload)

        def _forward(self, entry: dict, key: str | None, upload: _Upload | None) -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=600)
            chunked = entry["chunked"]
            conn.putrequest(self.command, self._path(), skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP:
                    conn.putheader(name, value)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            elif self.headers.get("Content-Length") is not None:
                conn.putheader("Content-Length", self.headers["Content-Length"])
            conn.endheaders()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sent = 0
            kept = bytearray()
            pending = bytearray()  # small frames (`docker push` sends its layers in many) go on in 1 MiB sends

            def flush() -> None:
                if pending:
                    conn.send(b"%x\r\n%s\r\n" % (len(pending), pending) if chunked else bytes(pending))
                    pending.clear()

            for piece in _read_body(self):
                sent += len(piece)
                if self.rules.keep_bodies:
                    kept += piece
                pending += piece
                if len(pending) >= MIB:
                    flush()
            flush()
            if chunked:
                conn.send(b"0\r\n\r\n")
            entry["sent"] = sent
            if self.rules.keep_bodies:
                entry["body"] = bytes(kept)
            response = conn.getresponse()
            status = response.status
            headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP}
            self._account(entry, key, upload, status, headers, sent)
            if self.command == "PATCH" and self.rules.patch_created and status == 202:
                status = 201
            entry["status"] = status
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            length = response.getheader("Content-Length")
            if self.command == "HEAD":
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                conn.close()
                return
            if length is None:
                data = response.read()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self.send_header("Content-Length", length)
                self.end_headers()
                while piece := response.read(MIB):
                    self.wfile.write(piece)
            conn.close()

        def _account(self, entry: dict, key: str | None, upload: _Upload | None, status: int,
                     headers: dict[str, str], sent: int) -> None:
            path = urlsplit(self.path).path
            if self.command == "GET" and "/manifests/" in path and status == 200:
                with log.lock:
                    log.manifest_gets += 1
            if self.command == "POST" and status == 202 and headers.get("Location"):
                opened = _UPLOAD.match(urlsplit(headers["Location"]).path)
                if opened:
                    with log.lock:
                        log.uploads[f"{opened.group(1)}/{opened.group(2)}"] = _Upload()
            if upload is None:
                return
            if self.command == "PATCH" and status == 202:
                upload.received += sent
                if entry["range"]:
                    upload.parts.append(sent)
                if self.rules.stale_range:
                    upload.first_range = upload.first_range or headers.get("Range")
                    headers["Range"] = upload.first_range or headers.get("Range", "0-0")
            if self.command == "GET" and self.rules.stale_range and upload.first_range:
                headers["Range"] = upload.first_range
            if self.command == "PUT" and status == 201:
                upload.received += sent
                upload.committed = dict(parse_qsl(urlsplit(self.path).query)).get("digest")

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
