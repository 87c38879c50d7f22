"""A loopback stand-in for the one GitHub REST API call the outdated workflow makes:
`POST /repos/{owner}/{repo}/pulls` (https://docs.github.com/en/rest/pulls/pulls#create-a-pull-request;
the request schema in github/rest-api-description, operation `pulls/create`).

It refuses what GitHub refuses, each with GitHub's status and message shape:
- no User-Agent header: 403 (the REST API rejects requests without one, since 2013);
- a missing or wrong token (`Authorization: Bearer TOKEN` or `token TOKEN`): 401 "Bad credentials";
- an X-GitHub-Api-Version GitHub does not serve: 400;
- another repository, or another method or path: 404 "Not Found";
- a body that is not a JSON object: 400 "Problems parsing JSON";
- `head` or `base` missing, `title` missing (it is optional only with `issue`), a field of the
  wrong type, or a field the operation does not take: 422 "Invalid request.";
- a `base` or `head` branch the repository does not have, no commits between them, or an open
  pull request from the same head: 422 "Validation Failed" with GitHub's error objects.
The repository is a real bare git repository (the one the workflow pushed the branch to), so
"the branch exists" and "it has commits the base lacks" are answered by git.
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

API_VERSIONS = {"2022-11-28", "2026-03-10"}
FIELDS = {"title": str, "head": str, "head_repo": str, "base": str, "body": str, "maintainer_can_modify": bool,
          "draft": bool, "issue": int}
DOCS = "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"


@dataclass
class GitHubState:
    owner: str
    repo: str
    token: str
    origin: Path  # the bare repository behind owner/repo
    pulls: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)  # every request: method, path, headers, body
    lock: threading.Lock = field(default_factory=threading.Lock)

    def branch(self, name: str) -> str | None:
        found = subprocess.run(["git", "-C", str(self.origin), "rev-parse", "--verify", "--quiet", f"refs/heads/{name}"],
                               capture_output=True, text=True)
        return found.stdout.strip() or None

    def ahead(self, base: str, head: str) -> int:
        count = subprocess.run(["git", "-C", str(self.origin), "rev-list", "--count", f"{base}..{head}"],
                               capture_output=True, text=True, check=True)
        return int(count.stdout)


def _invalid(message: str) -> tuple[int, dict[str, Any]]:
    return 422, {"message": f"Invalid request.\n\n{message}", "documentation_url": DOCS, "status": "422"}


def _failed(*errors: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 422, {"message": "Validation Failed", "errors": list(errors), "documentation_url": DOCS, "status": "422"}


def create_pull(state: GitHubState, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """What GitHub answers to a well-formed, authorised POST with this body."""
    for name, value in body.items():
        if name not in FIELDS:
            return _invalid(f'"{name}" is not a permitted key.')
        if not isinstance(value, FIELDS[name]) or (FIELDS[name] is int and isinstance(value, bool)):
            return _invalid(f'For \'properties/{name}\', {json.dumps(value)} is not a {FIELDS[name].__name__}.')
    for required in ("head", "base"):
        if required not in body:
            return _invalid(f'"{required}" wasn\'t supplied.')
    if "title" not in body and "issue" not in body:
        return _invalid('"title" wasn\'t supplied.')
    head, base = body["head"].split(":", 1)[-1], body["base"]
    if state.branch(base) is None:
        return _failed({"resource": "PullRequest", "field": "base", "code": "invalid"})
    if state.branch(head) is None:
        return _failed({"resource": "PullRequest", "field": "head", "code": "invalid"})
    if state.ahead(base, head) == 0:
        return _failed({"resource": "PullRequest", "code": "custom", "message": f"No commits between {base} and {head}"})
    with state.lock:
        if any(p["head"]["ref"] == head and p["state"] == "open" for p in state.pulls):
            return _failed({"resource": "PullRequest", "code": "custom",
                            "message": f"A pull request already exists for {state.owner}:{head}."})
        number = len(state.pulls) + 1
        pull = {"number": number, "state": "open", "title": body.get("title"), "body": body.get("body"),
                "draft": body.get("draft", False),
                "url": f"https://api.github.com/repos/{state.owner}/{state.repo}/pulls/{number}",
                "html_url": f"https://github.com/{state.owner}/{state.repo}/pull/{number}",
                "head": {"ref": head, "sha": state.branch(head), "label": f"{state.owner}:{head}"},
                "base": {"ref": base, "sha": state.branch(base), "label": f"{state.owner}:{base}"}}
        state.pulls.append(pull)
    return 201, pull


class _Handler(BaseHTTPRequestHandler):
    state: GitHubState

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        return

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-GitHub-Api-Version-Selected", self.headers.get("X-GitHub-Api-Version") or "2022-11-28")
        self.end_headers()
        self.wfile.write(data)

    def _refusal(self) -> tuple[int, dict[str, Any]] | None:
        if not self.headers.get("User-Agent"):
            return 403, {"message": "Request forbidden by administrative rules. Please make sure your request has a "
                                    "User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required)."}
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() not in ("bearer", "token") or token != self.state.token:
            return 401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}
        version = self.headers.get("X-GitHub-Api-Version")
        if version is not None and version not in API_VERSIONS:
            return 400, {"message": f"Invalid API version '{version}'", "documentation_url": DOCS, "status": "400"}
        return None

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with self.state.lock:
            self.state.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                        "body": raw.decode("utf-8", "replace")})
        refusal = self._refusal()
        if refusal is not None:
            self._answer(*refusal)
            return
        if self.command != "POST" or self.path.split("?")[0] != f"/repos/{self.state.owner}/{self.state.repo}/pulls":
            self._answer(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._answer(400, {"message": "Problems parsing JSON", "documentation_url": DOCS, "status": "400"})
            return
        self._answer(*create_pull(self.state, body))

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle  # noqa: N815 - the stdlib's naming


class GitHubStandIn:
    def __init__(self, owner: str, repo: str, token: str, origin: Path) -> None:
        self.state = GitHubState(owner, repo, token, origin)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "GitHubStandIn":
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
