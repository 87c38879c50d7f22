"""A Hugging Face Hub-compatible file server for loopback: the demo's and the tests' Hub.

huggingface_hub talks to it unmodified through HF_ENDPOINT. It implements the part of the
Hub's HTTP API that downloads use (checked against huggingface_hub 2.4's file_download.py and
hf_api.py):

- GET  /api/models/{ns}/{name}[/revision/{rev}]    -> {"id", "sha", "gated", "siblings": [{"rfilename"}],
                                                        and from README.md's front matter "cardData",
                                                        "pipeline_tag", "library_name", "tags"}
- GET  /api/models/{ns}/{name}/tree/{rev}[/{dir}]   -> [{"type": "file", "path", "size", "oid", "lfs"?}]
- HEAD /{ns}/{name}/resolve/{rev}/{path}            -> X-Repo-Commit, quoted ETag, Content-Length
- GET  /{ns}/{name}/resolve/{rev}/{path}            -> the bytes; "Range: bytes=N-[M]" gives 206
Spaces and datasets the same way, under /api/spaces/, /api/datasets/ and /spaces/, /datasets/.

Errors carry the Hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo)
with its status. A repository is a directory; its commit id is a hash of its file listing,
so the same files always publish under the same 40-hex revision, which a committed manifest
can pin. `main` resolves to that commit. `hub.commit(repo_id, directory)` adds a new commit on
top, as a push to the Hub does: `main` moves to it and the earlier commits stay resolvable by
their ids (the Hub keeps a repository's history; a pinned manifest still builds).

With `cdn=True`, LFS files are not served by the Hub itself: HEAD and GET on /resolve answer
302 to a second origin (another port), with X-Linked-Size / X-Linked-Etag, as the real Hub
redirects to its CDN; the CDN needs no token and must not be sent one.

Faults (`hub.inject(Fault(...))`) make chosen requests fail the ways real downloads fail: an
HTTP status (5xx, 429 with Retry-After, 401/403), a connection dropped mid-body, a slow
trickle, a stall, corrupted bytes. Every request is logged (origin, method, path, status,
token, Range, body bytes sent), so tests can assert on what was asked and what was sent.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".onnx", ".gguf", ".msgpack", ".h5")
LFS_MIN_SIZE = 10 * 1024 * 1024
_CHUNK = 1 << 20


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file, as the Hub reports for files kept in plain git."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    blob_id: str  # git blob sha1
    sha256: str | None  # set for LFS files only, as on the Hub

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


@dataclass
class Repo:
    repo_id: str
    root: Path
    files: dict[str, RepoFile]
    commit: str
    gated_tokens: frozenset[str] | None = None  # None: public; a set: only these tokens may read


def scan_repo(repo_id: str, root: Path, gated_tokens: frozenset[str] | None = None) -> Repo:
    files: dict[str, RepoFile] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = path.stat().st_size
        lfs = rel.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
        files[rel] = RepoFile(rel, size, git_blob_sha1(path), file_sha256(path) if lfs else None)
    listing = "".join(f"{f.path}\0{f.blob_id}\n" for f in files.values())
    commit = hashlib.sha1(f"tree {repo_id}\n{listing}".encode()).hexdigest()
    return Repo(repo_id, root, files, commit, gated_tokens)


def card_fields(repo: Repo) -> dict[str, object]:
    """What the Hub derives from README.md's YAML front matter: `cardData`, and from it the
    `pipeline_tag`, `library_name` and `tags` the repository's info carries (absent: no card)."""
    readme = repo.files.get("README.md")
    if readme is None:
        return {}
    text = (repo.root / readme.path).read_text(encoding="utf-8", errors="replace")
    match = re.match(r"---\s*\n(.*?)\n---\s*(?:\n|$)", text, re.S)
    data = yaml.safe_load(match.group(1)) if match else None
    if not isinstance(data, dict):
        return {}
    fields: dict[str, object] = {"cardData": data, "tags": list(data.get("tags") or [])}
    for key in ("pipeline_tag", "library_name"):
        if data.get(key):
            fields[key] = data[key]
    return fields


@dataclass
class Fault:
    """A way to fail the next `times` requests whose path contains `path` (and method matches)."""

    kind: Literal["status", "drop", "trickle", "stall", "corrupt"]
    path: str = ""
    method: str | None = "GET"
    times: int = 1  # -1: every matching request
    origin: str | None = None  # "hub", "cdn" or None for both
    status: int = 503
    retry_after: str | None = None  # for status faults, e.g. "1"
    error_code: str | None = None  # X-Error-Code, e.g. "GatedRepo"
    after_bytes: int = 0  # drop / stall / corrupt: after this many body bytes
    rate: int = 0  # trickle: bytes per second
    stall_seconds: float = 0.0


@dataclass
class LoggedRequest:
    origin: str
    method: str
    path: str
    status: int
    token: str | None
    range: str | None
    sent: int = 0  # body bytes written
    fault: str | None = None
    peer: int = 0  # the client's port: one per TCP connection


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    history: dict[str, dict[str, Repo]] = field(default_factory=dict)  # key -> earlier commit id -> the repo then
    log: list[LoggedRequest] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cdn_url: str | None = None
    link_rate: int | None = None  # bytes per second shared by every response: an emulated link
    valid_tokens: set[str] | None = None  # when set, any other token is refused with 401, as the Hub does
    link_clock: float = 0.0

    def reserve_link(self, n: int) -> float:
        """Seconds to wait before sending n more bytes over the emulated link."""
        if not self.link_rate:
            return 0.0
        with self.lock:
            now = time.monotonic()
            self.link_clock = max(self.link_clock, now) + n / self.link_rate
            return self.link_clock - now - n / self.link_rate

    def take_fault(self, origin: str, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times == 0 or fault.path not in path:
                    continue
                if fault.method is not None and fault.method != method:
                    continue
                if fault.origin is not None and fault.origin != origin:
                    continue
                if fault.times > 0:
                    fault.times -= 1
                return fault
        return None

    def blob(self, sha256: str) -> tuple[Repo, RepoFile] | None:
        with self.lock:
            for repo in self.repos.values():
                for entry in repo.files.values():
                    if entry.sha256 == sha256:
                        return repo, entry
        return None


class _Dropped(Exception):
    """The connection was cut on purpose."""


class _Handler(BaseHTTPRequestHandler):
    server_version = "localhub/1"
    protocol_version = "HTTP/1.1"
    state: HubState  # set on the subclass made per server
    origin: str = "hub"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return  # the request log below is the record; stderr stays quiet

    # -- plumbing -------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def _record(self, status: int, sent: int = 0, fault: Fault | None = None) -> LoggedRequest:
        """Log the request as soon as its answer starts (the body's byte count follows), so a
        client that has read everything never sees the log lag behind."""
        entry = LoggedRequest(self.origin, self.command, self.path, status, self._token(), self.headers.get("Range"),
                              sent, fault.kind if fault else None, self.client_address[1])
        with self.state.lock:
            self.state.log.append(entry)
        return entry

    def _send_json(self, status: int, body: object, headers: dict[str, str] | None = None,
                   fault: Fault | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self._record(status, fault=fault)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None,
               fault: Fault | None = None) -> None:
        extra = {"X-Error-Message": message, **(headers or {})}
        if code:
            extra["X-Error-Code"] = code
        self._send_json(status, {"error": message}, extra, fault)

    def _repo(self, ns: str, name: str, kind: str | None = None) -> Repo | None:
        repo_id = f"{ns}/{name}"
        key = f"{kind}/{repo_id}" if kind in ("spaces", "datasets") else repo_id
        token = self._token()
        if token is not None and self.state.valid_tokens is not None and token not in self.state.valid_tokens:
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        repo = self.state.repos.get(key)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return None
        if repo.gated_tokens is not None:
            token = self._token()
            if token is None:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.")
                return None
            if token not in repo.gated_tokens:
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the authorized list. Visit https://huggingface.co/{repo_id} to ask for access.")
                return None
        return repo

    def _at(self, repo: Repo, rev: str, kind: str | None = None) -> Repo | None:
        """The repository at revision rev (main, its commit, or an earlier commit), or None (answered)."""
        rev = unquote(rev)
        if rev in ("main", repo.commit):
            return repo
        key = f"{kind}/{repo.repo_id}" if kind in ("spaces", "datasets") else repo.repo_id
        with self.state.lock:
            earlier = self.state.history.get(key, {}).get(rev)
        if earlier is not None:
            return earlier
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return None

    # -- routes ---------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        path = urlsplit(self.path).path
        fault = self.state.take_fault(self.origin, self.command, path)
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._error(fault.status, fault.error_code, f"injected {fault.status}", headers, fault)
            return
        try:
            if self.origin == "cdn":
                self._route_cdn(path, fault)
            else:
                self._route_hub(path, fault)
        except _Dropped:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route_cdn(self, path: str, fault: Fault | None) -> None:
        match = re.fullmatch(r"/blobs/([0-9a-f]{64})", path)
        found = self.state.blob(match.group(1)) if match else None
        if found is None:
            self._error(404, None, "NoSuchKey")
            return
        repo, entry = found
        self._send_file(repo, entry, fault, cdn=True)

    def _route_hub(self, path: str, fault: Fault | None) -> None:
        api = re.fullmatch(r"/api/(models|spaces|datasets)/([^/]+)/([^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?", path)
        if api:
            repo_kind, ns, name, kind, rev, sub = api.groups()
            kind, rev = kind or "revision", rev or "main"
            repo = self._repo(ns, name, repo_kind)
            repo = repo and self._at(repo, rev, repo_kind)
            if repo is None:
                return
            if kind == "revision":
                body = {
                    "id": repo.repo_id,
                    "modelId": repo.repo_id,
                    "sha": repo.commit,
                    "private": False,
                    "gated": "manual" if repo.gated_tokens is not None else False,
                    "siblings": [{"rfilename": p} for p in repo.files],
                    **card_fields(repo),
                }
                self._send_json(200, body)
                return
            prefix = unquote(sub).strip("/") + "/" if sub else ""
            entries = []
            for f in repo.files.values():
                if not f.path.startswith(prefix):
                    continue
                entry: dict[str, object] = {"type": "file", "path": f.path, "size": f.size, "oid": f.blob_id}
                if f.sha256:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                entries.append(entry)
            self._send_json(200, entries)
            return
        resolve = re.fullmatch(r"/(?:(spaces|datasets)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", path)
        if resolve:
            repo_kind, ns, name, rev, file_path = resolve.groups()
            repo = self._repo(ns, name, repo_kind)
            repo = repo and self._at(repo, rev, repo_kind)
            if repo is None:
                return
            entry = repo.files.get(unquote(file_path))
            if entry is None:
                self._error(404, "EntryNotFound", f"{file_path} does not exist on revision {repo.commit}",
                            {"X-Repo-Commit": repo.commit})
                return
            if entry.sha256 and self.state.cdn_url:
                self._redirect_to_cdn(repo, entry)
                return
            self._send_file(repo, entry, fault)
            return
        self._error(404, "EntryNotFound", f"No route for {path}")

    def _redirect_to_cdn(self, repo: Repo, entry: RepoFile) -> None:
        """As the real Hub does for LFS files: 302 to a signed CDN URL, metadata on the redirect."""
        self.send_response(302)
        self.send_header("Location", f"{self.state.cdn_url}/blobs/{entry.sha256}?X-Amz-Signature=localhub")
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
        self.send_header("X-Linked-Size", str(entry.size))
        self.send_header("ETag", f'"{entry.blob_id}"')
        self.send_header("Content-Length", "0")
        self._record(302)
        self.end_headers()

    def _send_file(self, repo: Repo, entry: RepoFile, fault: Fault | None, cdn: bool = False) -> None:
        start, end, status = 0, entry.size - 1, HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not match or int(match.group(1)) >= max(entry.size, 1):
                self._error(416, "RangeNotSatisfiable", f"bad range {rng}")
                return
            start = int(match.group(1))
            end = min(int(match.group(2)), entry.size - 1) if match.group(2) else entry.size - 1
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", f'"{entry.etag}"')
        self.send_header("Accept-Ranges", "bytes")
        if not cdn:
            self.send_header("X-Repo-Commit", repo.commit)
            if entry.sha256:
                self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
                self.send_header("X-Linked-Size", str(entry.size))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        logged = self._record(int(status), 0, fault)
        self.end_headers()
        if self.command == "GET":
            self._body(repo.root / entry.path, start, end - start + 1, fault, logged)

    def _body(self, path: Path, start: int, length: int, fault: Fault | None, logged: LoggedRequest) -> None:
        """Write length bytes of path from start, applying a body fault; count them in `logged`."""
        kind = fault.kind if fault else None
        chunk = 16 * 1024 if kind == "trickle" else _CHUNK
        with path.open("rb") as fh:
            fh.seek(start)
            while logged.sent < length:
                data = fh.read(min(chunk, length - logged.sent))
                if not data:
                    break
                if kind in ("drop", "stall", "corrupt") and logged.sent + len(data) > fault.after_bytes >= logged.sent:
                    cut = fault.after_bytes - logged.sent
                    if kind == "corrupt":
                        data = data[:cut] + bytes([data[cut] ^ 0xFF]) + data[cut + 1:]
                    else:
                        self.wfile.write(data[:cut])
                        self.wfile.flush()
                        logged.sent += cut
                        if kind == "stall":
                            time.sleep(fault.stall_seconds)
                        self.connection.shutdown(socket.SHUT_RDWR)
                        raise _Dropped()
                if kind == "trickle":
                    time.sleep(len(data) / fault.rate)  # pace first: the last byte is not followed by a sleep
                wait = self.state.reserve_link(len(data))
                if wait > 0:
                    time.sleep(wait)
                self.wfile.write(data)
                logged.sent += len(data)


def _server(state: HubState, origin: str, host: str, port: int) -> ThreadingHTTPServer:
    handler = type(f"{origin.title()}Handler", (_Handler,), {"state": state, "origin": origin})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    return httpd


class LocalHub:
    """A loopback Hub (and, with cdn=True, its CDN). Use as a context manager, or start()/stop()."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, cdn: bool = False,
                 link_rate: int | None = None) -> None:
        self.root = Path(root)
        self.state = HubState(link_rate=link_rate)
        self._servers = [_server(self.state, "hub", host, port)]
        if cdn:
            self._servers.append(_server(self.state, "cdn", host, 0))
            cdn_host, cdn_port = self._servers[1].server_address[:2]
            self.state.cdn_url = f"http://{cdn_host}:{cdn_port}"
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._servers[0].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_url(self) -> str | None:
        return self.state.cdn_url

    def publish(self, repo_id: str, source: Path, gated_tokens: set[str] | None = None, repo_type: str = "model") -> str:
        """Copy a directory in as repo_id (a model, space or dataset; replacing it, history and all, as
        a force-push would) and return its commit id."""
        key = repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"
        dest = self.root / key
        if dest.exists():
            shutil.rmtree(dest)
        with self.state.lock:
            self.state.history.pop(key, None)
        shutil.copytree(source, dest)
        return self.serve_in_place(repo_id, dest, gated_tokens, repo_type)

    def serve_in_place(self, repo_id: str, directory: Path, gated_tokens: set[str] | None = None,
                       repo_type: str = "model") -> str:
        repo = scan_repo(repo_id, Path(directory), frozenset(gated_tokens) if gated_tokens is not None else None)
        key = repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"
        with self.state.lock:
            self.state.repos[key] = repo
        return repo.commit

    def commit(self, repo_id: str, source: Path, gated_tokens: set[str] | None = None, repo_type: str = "model") -> str:
        """A new commit on repo_id with source's files (and gating): main moves to it, the earlier
        commits stay resolvable by their ids. Returns the new commit id."""
        key = repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"
        with self.state.lock:
            earlier = self.state.repos[key]
            number = len(self.state.history.get(key, {})) + 1
        dest = self.root / ".commits" / f"{key}@{number}"
        shutil.copytree(source, dest)
        with self.state.lock:
            self.state.history.setdefault(key, {})[earlier.commit] = earlier
        return self.serve_in_place(repo_id, dest, gated_tokens, repo_type)

    def inject(self, *faults: Fault) -> None:
        with self.state.lock:
            self.state.faults.extend(faults)

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    @property
    def requests(self) -> list[LoggedRequest]:
        with self.state.lock:
            return list(self.state.log)

    def clear_log(self) -> None:
        with self.state.lock:
            self.state.log.clear()

    def start(self) -> "LocalHub":
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, name="localhub", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def serve_forever(self) -> None:
        for server in self._servers[1:]:
            threading.Thread(target=server.serve_forever, name="localhub-cdn", daemon=True).start()
        self._servers[0].serve_forever()

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["Fault", "LocalHub", "LoggedRequest", "scan_repo", "git_blob_sha1", "file_sha256"]
