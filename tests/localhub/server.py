"""A Hugging Face Hub-compatible file server for loopback: the demo's and the tests' Hub.

huggingface_hub talks to it unmodified through HF_ENDPOINT. It implements the part of the
Hub's HTTP API that downloads use (checked against huggingface_hub 2.4's file_download.py and
hf_api.py):

- GET  /api/models/{ns}/{name}[/revision/{rev}]    -> {"id", "sha", "siblings": [{"rfilename"}]}
- GET  /api/models/{ns}/{name}/tree/{rev}[/{dir}]   -> [{"type": "file", "path", "size", "oid", "lfs"?}]
- HEAD /{ns}/{name}/resolve/{rev}/{path}            -> X-Repo-Commit, quoted ETag, Content-Length
- GET  /{ns}/{name}/resolve/{rev}/{path}            -> the bytes; "Range: bytes=N-" gives 206

Errors carry the Hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo)
with its status. A repository is a directory; its commit id is a hash of its file listing,
so the same files always publish under the same 40-hex revision, which a committed manifest
can pin. `main` resolves to that commit.

Every request is logged (method, path, status, whether a token came with it, and the token
itself so tests can prove a secret reached the Hub and nowhere else).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".onnx", ".gguf", ".msgpack", ".h5")
LFS_MIN_SIZE = 10 * 1024 * 1024
HEX40 = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file, as the Hub reports for files kept in plain git."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
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


@dataclass
class LoggedRequest:
    method: str
    path: str
    status: int
    token: str | None
    range: str | None


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[LoggedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server_version = "localhub/1"
    protocol_version = "HTTP/1.1"
    state: HubState  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return  # the request log below is the record; stderr stays quiet

    # -- plumbing -------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def _record(self, status: int) -> None:
        with self.state.lock:
            self.state.log.append(
                LoggedRequest(self.command, self.path, status, self._token(), self.headers.get("Range"))
            )

    def _send_json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._record(status)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})

    def _repo(self, ns: str, name: str) -> Repo | None:
        repo_id = f"{ns}/{name}"
        repo = self.state.repos.get(repo_id)
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

    def _revision(self, repo: Repo, rev: str) -> bool:
        rev = unquote(rev)
        if rev in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return False

    # -- routes ---------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        path = urlsplit(self.path).path
        api = re.fullmatch(r"/api/models/([^/]+)/([^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?", path)
        if api:
            ns, name, kind, rev, sub = api.groups()
            kind, rev = kind or "revision", rev or "main"
            repo = self._repo(ns, name)
            if repo is None or not self._revision(repo, rev):
                return
            if kind == "revision":
                body = {
                    "id": repo.repo_id,
                    "modelId": repo.repo_id,
                    "sha": repo.commit,
                    "private": False,
                    "gated": "manual" if repo.gated_tokens is not None else False,
                    "siblings": [{"rfilename": p} for p in repo.files],
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
        resolve = re.fullmatch(r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", path)
        if resolve:
            ns, name, rev, file_path = resolve.groups()
            repo = self._repo(ns, name)
            if repo is None or not self._revision(repo, rev):
                return
            self._send_file(repo, unquote(file_path))
            return
        self._error(404, "EntryNotFound", f"No route for {path}")

    def _send_file(self, repo: Repo, file_path: str) -> None:
        entry = repo.files.get(file_path)
        if entry is None:
            self._error(404, "EntryNotFound", f"{file_path} does not exist on revision {repo.commit}",
                        {"X-Repo-Commit": repo.commit})
            return
        start, status = 0, HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng:
            match = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            if not match or int(match.group(1)) > entry.size:
                self._error(416, "RangeNotSatisfiable", f"bad range {rng}")
                return
            start, status = int(match.group(1)), HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(entry.size - start))
        self.send_header("ETag", f'"{entry.etag}"')
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("Accept-Ranges", "bytes")
        if entry.sha256:
            self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Size", str(entry.size))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{entry.size - 1}/{entry.size}")
        self.end_headers()
        if self.command == "GET":
            with (repo.root / file_path).open("rb") as fh:
                fh.seek(start)
                shutil.copyfileobj(fh, self.wfile, 1 << 20)
        self._record(int(status))


class LocalHub:
    """A loopback Hub. Use as a context manager, or start()/stop()."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def publish(self, repo_id: str, source: Path, gated_tokens: set[str] | None = None) -> str:
        """Copy a directory in as repo_id (replacing it) and return its commit id."""
        dest = self.root / repo_id
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(source, dest)
        return self.serve_in_place(repo_id, dest, gated_tokens)

    def serve_in_place(self, repo_id: str, directory: Path, gated_tokens: set[str] | None = None) -> str:
        repo = scan_repo(repo_id, Path(directory), frozenset(gated_tokens) if gated_tokens is not None else None)
        with self.state.lock:
            self.state.repos[repo_id] = repo
        return repo.commit

    @property
    def requests(self) -> list[LoggedRequest]:
        with self.state.lock:
            return list(self.state.log)

    def clear_log(self) -> None:
        with self.state.lock:
            self.state.log.clear()

    def start(self) -> "LocalHub":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="localhub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until_up(url: str, timeout: float = 10.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/models/x/y/revision/main", timeout=1)
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        else:
            return


__all__ = ["LocalHub", "scan_repo", "wait_until_up", "git_blob_sha1", "file_sha256"]
