"""Failures to connect are recognised whichever client raised them, and nothing else is."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from builder import reach
from builder.errors import Unreachable

CLOSED = "http://127.0.0.1:9/x"  # the discard port: nothing listens on it here
NO_NAME = "http://no-such-host.invalid:2375/x"  # .invalid never resolves (RFC 6761)


def _raised(call) -> BaseException:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the point is to look at it
        return exc
    raise AssertionError("the call did not fail")


def _requests(url: str) -> BaseException:
    import requests

    return _raised(lambda: requests.get(url, timeout=5))


def _httpx(url: str) -> BaseException:
    import httpx2

    return _raised(lambda: httpx2.get(url, timeout=5))


def _hub(url: str) -> BaseException:
    from huggingface_hub.utils import get_session

    return _raised(lambda: get_session().get(url, timeout=5))


def _docker(url: str) -> BaseException:
    import docker

    return _raised(lambda: docker.DockerClient(base_url=url.replace("http://", "tcp://").removesuffix("/x")).ping())


def _stdlib(url: str) -> BaseException:
    import urllib.request

    return _raised(lambda: urllib.request.urlopen(url, timeout=5))


@pytest.mark.parametrize("client", [_requests, _httpx, _hub, _docker, _stdlib])
def test_a_refused_connection_is_recognised(client) -> None:
    assert reach.connection_failure(client(CLOSED)) == "connection refused"


@pytest.mark.parametrize("client", [_requests, _httpx, _hub, _docker, _stdlib])
def test_a_name_that_does_not_resolve_is_recognised(client) -> None:
    assert reach.connection_failure(client(NO_NAME)) == "the name does not resolve"


def test_a_missing_unix_socket_is_recognised() -> None:
    import docker

    exc = _raised(lambda: docker.DockerClient(base_url="unix:///nonexistent.sock").ping())
    assert reach.connection_failure(exc) == "no socket there"


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_an_answer_is_not_a_connection_failure() -> None:
    import requests

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/x"
        exc = _raised(lambda: requests.get(url, timeout=5).raise_for_status())
        assert reach.connection_failure(exc) is None
        assert reach.probe(url) is None
    finally:
        server.shutdown()
    assert reach.connection_failure(ValueError("connection refused")) is None  # a word in a message is not enough
    assert reach.connection_failure(KeyError("x")) is None


def test_reaching_turns_only_connection_failures_into_one_line() -> None:
    with pytest.raises(Unreachable) as caught:
        with reach.reaching("the registry", "http://127.0.0.1:9", reach.REGISTRY):
            raise _requests(CLOSED)
    assert str(caught.value) == ("cannot reach the registry at http://127.0.0.1:9 (connection refused): check that "
                                 "the registry is running, --registry or BUILDER_REGISTRY, and the network and proxy")
    with pytest.raises(ZeroDivisionError):
        with reach.reaching("the registry", "http://127.0.0.1:9", reach.REGISTRY):
            raise ZeroDivisionError


def test_probe_goes_where_the_request_would(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert reach.probe(f"http://127.0.0.1:{port}/") is None
        assert reach.probe("http://127.0.0.1:9/") == "connection refused"
        assert reach.probe("https://no-such-host.invalid/") == "the name does not resolve"
        # Through a proxy the target's name is the proxy's business: only the proxy is dialled.
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        assert reach.probe("https://no-such-host.invalid/") is None
        monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
        assert reach.probe("https://no-such-host.invalid/") == "connection refused (through the proxy 127.0.0.1:9)"
        monkeypatch.setenv("no_proxy", "no-such-host.invalid")
        assert reach.probe("https://no-such-host.invalid/") == "the name does not resolve"
    finally:
        listener.close()
