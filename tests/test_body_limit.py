"""An oversized body gets a 413 the client can read, whichever client and whichever way it sends
(issue 22): urllib, requests, httpx and curl; with a Content-Length, chunked, and with
`Expect: 100-continue`; against the real server under uvicorn on a real socket, with each of
uvicorn's HTTP/1.1 implementations (httptools, which the images get through the runpod SDK's
dependencies, and h11, uvicorn's own fallback).

Before the lingering close, the server wrote its 413 and closed while the client was still
sending: the unread bytes made the kernel answer with a reset, and a client that sends its whole
body before reading (urllib) lost the answer."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port, wait_for
from tests.test_server import server_env, write_manifest_json

LIMIT = 1 << 20  # 1 MiB: the text-to-image default
BODY = b'{"prompt": "' + b"x" * (8 << 20) + b'"}'  # 8 MiB, the size that got a reset
CHUNK = 64 << 10
WAYS = ("content-length", "chunked", "expect-100-continue")


@contextmanager
def uvicorn_server(manifest_json: Path, model_dir: Path, http: str) -> Iterator[str]:
    """The server app under uvicorn with the given HTTP implementation, in a process of its own."""
    port = free_port()
    script = ("import sys, uvicorn\n"
              "from server.app import create_app\n"
              "from server.settings import Settings\n"
              "settings = Settings.from_env()\n"
              "uvicorn.run(create_app(settings), host=settings.host, port=settings.port, http=sys.argv[1],"
              " log_level='warning')\n")
    log = tempfile.TemporaryFile()
    env = server_env(manifest_json, model_dir, port, BUILDER_MAX_BODY_BYTES=str(LIMIT))
    proc = subprocess.Popen([sys.executable, "-c", script, http], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{url}/ready", timeout=2).status_code == 200, 60, f"the {http} server",
                 lambda: "exited" if proc.poll() is not None else None)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request, tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path, demo_manifest_data: dict) -> Iterator[str]:
    data = json.loads(json.dumps(demo_manifest_data))
    data["profile"] = "custom-local"
    data["entrypoint"] = {"loader": "custom", "function": "tests.fixtures.rigged:blank"}  # the body never gets there
    with uvicorn_server(write_manifest_json(tmp_path_factory.mktemp("limit"), data), tiny_sd, request.param) as url:
        yield url


def chunks() -> Iterator[bytes]:
    for start in range(0, len(BODY), CHUNK):
        yield BODY[start:start + CHUNK]


def headers(way: str) -> dict[str, str]:
    extra = {"Expect": "100-continue"} if way == "expect-100-continue" else {}
    return {"Content-Type": "application/json", **extra}


def body(way: str):
    return chunks() if way == "chunked" else BODY


def by_urllib(url: str, way: str) -> tuple[int, str]:
    # urllib sends a Content-Length for bytes and `Transfer-Encoding: chunked` for an iterable; it
    # never waits for a 100 Continue, so with Expect it sends the body at once.
    request = urllib.request.Request(f"{url}/v1/predict", data=body(way), headers=headers(way), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def by_requests(url: str, way: str) -> tuple[int, str]:
    response = requests.post(f"{url}/v1/predict", data=body(way), headers=headers(way), timeout=60)
    return response.status_code, response.text


def by_httpx(url: str, way: str) -> tuple[int, str]:
    import httpx

    response = httpx.post(f"{url}/v1/predict", content=body(way), headers=headers(way), timeout=60)
    return response.status_code, response.text


def by_curl(url: str, way: str) -> tuple[int, str]:
    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        file.write(BODY)
        file.flush()
        # curl waits for `100 Continue` before sending (it sends Expect itself for large bodies;
        # `Expect:` turns that off); it reads the answer while it sends.
        how = {"content-length": ["-H", "Expect:"], "chunked": ["-H", "Transfer-Encoding: chunked", "-H", "Expect:"],
               "expect-100-continue": ["-H", "Expect: 100-continue"]}[way]
        proc = subprocess.run(["curl", "-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}",
                               "-H", "Content-Type: application/json", *how, "--data-binary", f"@{file.name}",
                               f"{url}/v1/predict"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr  # 56 "Recv failure: Connection reset by peer" before the fix
    text, _, code = proc.stdout.rpartition("\n")
    return int(code), text


CLIENTS = {"urllib": by_urllib, "requests": by_requests, "httpx": by_httpx, "curl": by_curl}


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_an_oversized_body_gets_a_readable_413(server: str, client: str, way: str) -> None:
    status, text = CLIENTS[client](server, way)
    assert status == 413, text[:300]
    assert json.loads(text)["detail"].startswith(f"the request body is larger than {LIMIT} bytes")
    # The server is fine afterwards: the next request is served.
    assert requests.get(f"{server}/ready", timeout=10).status_code == 200


def test_a_body_within_the_limit_still_reaches_the_model(server: str) -> None:
    response = requests.post(f"{server}/v1/predict", json={"prompt": "a cat", "width": 64, "height": 64}, timeout=60)
    assert response.status_code == 200, response.text


def test_a_client_that_never_stops_sending_is_cut_off_after_the_linger_bound(server: str) -> None:
    """The lingering close is bounded in bytes: whoever keeps sending after the 413 is dropped."""
    import socket
    from urllib.parse import urlsplit

    from server.guards import LINGER_BYTES

    parts = urlsplit(server)
    block = b"x" * (1 << 20)
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {10 ** 12}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
        with pytest.raises(OSError):  # a reset or a broken pipe, once the server has dropped its bound
            while sent < 4 * LINGER_BYTES:
                sock.sendall(block)
                sent += len(block)
    assert sent >= LINGER_BYTES  # it did read that much first
