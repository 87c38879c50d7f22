"""HTTP byte ranges: GETs that hand the body over chunk by chunk, on kept-alive connections."""

from __future__ import annotations

import base64
import http.client
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable

from builder.fetch.failures import RETRY_STATUS, HttpStatus, NoRanges, Retryable, retry_after

BUFFER_BYTES = 1024 * 1024


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port): two URLs share credentials only when all three match."""
    import httpx2

    parsed = httpx2.URL(url)
    return parsed.scheme, parsed.host, parsed.port or {"http": 80, "https": 443}.get(parsed.scheme, 0)


class RangeClient:
    """Byte-range GETs over the standard library's http.client, one keep-alive connection per
    origin and thread. The body is read with readinto into one reused buffer and written with
    pwrite: on these machines that costs a fraction of the CPU per byte of an httpx stream
    (bench/fetch_speed.py), and on a fast link CPU is what limits a download. huggingface_hub
    still does the HEAD, the auth decision and the error mapping; this only moves bytes.
    HTTPS_PROXY/HTTP_PROXY/NO_PROXY are honoured (CONNECT tunnel for https)."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._local = threading.local()

    def _connection(self, url: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        pool = self._local.__dict__.setdefault("pool", {})
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.hostname, port)
        conn = pool.get(key)
        if conn is not None:
            return conn
        proxy = None if urllib.request.proxy_bypass(url.hostname or "") else urllib.request.getproxies().get(url.scheme)
        target_host, target_port, tunnel_headers = url.hostname, port, {}
        if proxy:
            parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            target_host, target_port = parsed.hostname, parsed.port or 80
            if parsed.username:
                credentials = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
                tunnel_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(target_host, target_port, timeout=self.connect_timeout,
                                               context=ssl.create_default_context())
            if proxy:
                conn.set_tunnel(url.hostname, port, headers=tunnel_headers)
        else:
            conn = http.client.HTTPConnection(target_host, target_port, timeout=self.connect_timeout)
        conn.connect()
        conn.sock.settimeout(self.read_timeout)
        conn._builder_absolute = bool(proxy) and url.scheme == "http"  # plain http through a proxy: absolute URI
        pool[key] = conn
        return conn

    def _drop(self, url: urllib.parse.SplitResult) -> None:
        pool = self._local.__dict__.get("pool", {})
        key = (url.scheme, url.hostname, url.port or (443 if url.scheme == "https" else 80))
        conn = pool.pop(key, None)
        if conn is not None:
            conn.close()

    def get(self, url: str, headers: dict[str, str], on_bytes: Callable[[memoryview], bool]) -> None:
        """GET url and hand the body to on_bytes chunk by chunk (it returns False to stop)."""
        parsed = urllib.parse.urlsplit(url)
        path = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
        conn = self._connection(parsed)
        keep = False
        try:
            conn.request("GET", url if getattr(conn, "_builder_absolute", False) else path, headers=headers)
            response = conn.getresponse()
            status = response.status
            if status >= 300:
                detail = response.headers.get("X-Error-Message") or response.reason
                code = response.headers.get("X-Error-Code")
                response.read()
                keep = not response.will_close
                if status in RETRY_STATUS:
                    raise Retryable(f"HTTP {status}", retry_after(response.headers.get("Retry-After")))
                raise HttpStatus(status, code, detail)
            if status == 200 and "Range" in headers and not headers["Range"].startswith("bytes=0-"):
                raise NoRanges()
            if status == 206:
                asked = headers.get("Range", "bytes=0-").removeprefix("bytes=").split("-")[0]
                got = (response.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0]
                if got != asked:  # bytes from elsewhere in the file would be written at the wrong offset
                    raise Retryable(f"asked for bytes from {asked}, the server sent from {got or '?'}")
            buffer = memoryview(bytearray(BUFFER_BYTES))
            while True:
                n = response.readinto(buffer)
                if not n:
                    break
                if not on_bytes(buffer[:n]):
                    # Stopped: reusable only when that was the body's last byte.
                    keep = response.length == 0 and not response.will_close
                    return
            keep = not response.will_close
        finally:
            if not keep:
                self._drop(parsed)
