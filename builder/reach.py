"""Failing to reach a service is bad input from the world, not a bug.

The Hub, a registry, RunPod and the Docker engine are reached through different clients
(huggingface_hub over httpx, requests, the Docker SDK, the standard library), each with its own
exception for "could not connect". `connection_failure` recognises all of them, by walking the
exception chain, and says why in a few words; `reaching` turns such a failure into one
`Unreachable` line that names what was tried and what to check. Standard library only: nothing
here imports a client, so it works whichever of them raised.
"""

from __future__ import annotations

import errno
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from builder.errors import Unreachable

# What to check, per service: the settings that decide where the builder connects.
HUB = "the network and proxy (HTTPS_PROXY, NO_PROXY), HF_ENDPOINT, and the mirrors in [tool.builder] or --config"
REGISTRY = "that the registry is running, --registry or BUILDER_REGISTRY, and the network and proxy"
RUNPOD = "the network and proxy (HTTPS_PROXY), and RUNPOD_API_BASE_URL or RUNPOD_ENDPOINT_BASE_URL if set"
DOCKER = "that dockerd is running and DOCKER_HOST points at it"

# Client exception classes that mean "no connection was made" (by name: no client is imported).
_CONNECT_TYPES = {"ConnectError", "ConnectTimeout", "NewConnectionError", "NameResolutionError", "ProxyError",
                  "ConnectionError"}
# Texts the clients put in such an error when the cause object is not kept in the chain.
_REASONS = (
    ("name or service not known", "the name does not resolve"),
    ("temporary failure in name resolution", "the name does not resolve"),
    ("nodename nor servname", "the name does not resolve"),
    ("failed to resolve", "the name does not resolve"),
    ("getaddrinfo failed", "the name does not resolve"),
    ("connection refused", "connection refused"),
    ("no route to host", "no route to the host"),
    ("network is unreachable", "the network is unreachable"),
    ("tunnel connection failed", "the proxy refused the connection"),
    ("unable to connect to proxy", "the proxy refused the connection"),
    ("no such file or directory", "no socket there"),
    ("connection reset", "the connection was dropped"),
    ("connection aborted", "the connection was dropped"),
    ("timed out", "timed out while connecting"),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        # urllib3's MaxRetryError keeps the cause in .reason; requests wraps it in args[0].
        todo.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        todo.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))


def _reason_of(exc: BaseException) -> str | None:
    if isinstance(exc, socket.gaierror):
        return "the name does not resolve"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "no route to the host"
    if isinstance(exc, FileNotFoundError):
        return "no socket there"
    return None


def connection_failure(exc: BaseException) -> str | None:
    """Why no connection could be made ("connection refused", ...), or None if `exc` is not that."""
    chain = list(_chain(exc))
    for link in chain:
        reason = _reason_of(link)
        if reason:
            return reason
    if not any(type(link).__name__ in _CONNECT_TYPES or isinstance(link, ConnectionError) for link in chain):
        return None
    text = " ".join(str(link) for link in chain).lower()
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    return "no connection could be made"


def probe(url: str, timeout: float = 5.0) -> str | None:
    """Open (and close) a TCP connection to where a request for `url` would go: the host, or the
    proxy the environment names for it. None when it opens, else why not.

    For clients that retry a failed connection for half a minute before they give up
    (huggingface_hub's http_backoff): a name that does not resolve will not resolve on the fifth try.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies_environment().get(parts.scheme)
    via = ""
    if proxy and not urllib.request.proxy_bypass_environment(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or "", proxied.port or (443 if proxied.scheme == "https" else 80)
        via = f" (through the proxy {host}:{port})"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = _reason_of(exc) or ("timed out while connecting" if isinstance(exc, TimeoutError)
                                     else " ".join(str(exc).split())[:80])
        return reason + via
    return None


def unreachable(what: str, address: str, reason: str, check: str) -> Unreachable:
    return Unreachable(f"cannot reach {what} at {address} ({reason}): check {check}")


@contextmanager
def reaching(what: str, address: str, check: str) -> Iterator[None]:
    """Run the body; a failure to connect becomes one Unreachable line, anything else passes."""
    try:
        yield
    except Unreachable:
        raise
    except Exception as exc:
        reason = connection_failure(exc)
        if reason is None:
            raise
        raise unreachable(what, address, reason, check) from None
