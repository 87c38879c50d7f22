"""HTTP byte ranges: GETs that hand the body over chunk by chunk, on kept-alive connections."""

from __future__ import annotations

import base64
import http.client
import io
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable

from builder.fetch import tls
from builder.fetch.failures import RETRY_STATUS, HttpStatus, NoRanges, Retryable, retry_after

BUFFER_BYTES = 1024 * 1024


def proxy_for(url: urllib.parse.SplitResult) -> urllib.parse.SplitResult | None:
    """The proxy the environment names for url (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), if any."""
    if urllib.request.proxy_bypass(url.hostname or ""):
        return None
    proxy = urllib.request.getproxies().get(url.scheme)
    if not proxy:
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def basic_auth(username: str | None, password: str | None) -> str:
    credentials = f"{urllib.parse.unquote(username or '')}:{urllib.parse.unquote(password or '')}"
    return "Basic " + base64.b64encode(credentials.encode()).decode()


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

    Proxies as HTTPS_PROXY/HTTP_PROXY/NO_PROXY say, `http://` or `https://`, with the proxy
    URL's credentials as Proxy-Authorization: on the CONNECT of an https download, on every
    request of a plain-http one. TLS trusts the system's CAs plus SSL_CERT_FILE (tls.py).
    urllib3 would do the same, but is not in every weights stage (huggingface_hub brings httpx),
    and the weights stage holds only the standard library and huggingface_hub."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._local = threading.local()
        self._tls = tls.context()

    def _connection(self, url: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        pool = self._local.__dict__.setdefault("pool", {})
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.hostname, port)
        conn = pool.get(key)
        if conn is not None:
            return conn
        conn = self._open(url, port)
        conn.connect()
        conn.sock.settimeout(self.read_timeout)
        pool[key] = conn
        return conn

    def _open(self, url: urllib.parse.SplitResult, port: int) -> http.client.HTTPConnection:
        proxy = proxy_for(url)
        if proxy is None:
            if url.scheme == "https":
                return http.client.HTTPSConnection(url.hostname, port, timeout=self.connect_timeout, context=self._tls)
            return http.client.HTTPConnection(url.hostname, port, timeout=self.connect_timeout)
        proxy_port = proxy.port or (443 if proxy.scheme == "https" else 80)
        proxy_headers = {"Proxy-Authorization": basic_auth(proxy.username, proxy.password)} if proxy.username else {}
        if url.scheme == "https" and proxy.scheme == "https":
            conn = TunnelOverTLS(proxy.hostname, proxy_port, url.hostname, port, proxy_headers, self._tls,
                                 self.connect_timeout)
        elif url.scheme == "https":
            conn = http.client.HTTPSConnection(proxy.hostname, proxy_port, timeout=self.connect_timeout, context=self._tls)
            conn.set_tunnel(url.hostname, port, headers=proxy_headers)
        else:  # plain http through a proxy: absolute URIs, the proxy's credentials on every request
            if proxy.scheme == "https":
                conn = http.client.HTTPSConnection(proxy.hostname, proxy_port, timeout=self.connect_timeout,
                                                   context=self._tls)
            else:
                conn = http.client.HTTPConnection(proxy.hostname, proxy_port, timeout=self.connect_timeout)
            conn._builder_proxy_headers = proxy_headers
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
        if parsed.username is not None or parsed.password is not None:
            # A mirror's own credentials in its URL: Basic auth, in place of the Hub token, as
            # huggingface_hub's client does for the HEAD (httpx: the URL's userinfo wins).
            headers = {**headers, "Authorization": basic_auth(parsed.username, parsed.password)}
        conn = self._connection(parsed)
        keep = False
        try:
            proxy_headers = getattr(conn, "_builder_proxy_headers", None)
            if proxy_headers is None:
                conn.request("GET", path, headers=headers)
            else:  # the absolute URI a proxy needs, without the userinfo (it went into Authorization)
                netloc = parsed.hostname + (f":{parsed.port}" if parsed.port else "")
                absolute = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path or "/", parsed.query, ""))
                conn.request("GET", absolute, headers={**headers, **proxy_headers})
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


class TunnelOverTLS(http.client.HTTPConnection):
    """https through an https:// proxy: TLS to the proxy, CONNECT inside it, then TLS to the
    origin inside that (http.client's own tunnel runs over a plain socket only). The inner TLS
    runs on memory BIOs over the outer TLS socket."""

    def __init__(self, proxy_host: str, proxy_port: int, host: str, port: int, proxy_headers: dict[str, str],
                 context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._proxy = (proxy_host, proxy_port)
        self._proxy_headers = proxy_headers
        self._context = context

    def connect(self) -> None:
        raw = socket.create_connection(self._proxy, self.timeout)
        outer = self._context.wrap_socket(raw, server_hostname=self._proxy[0])
        lines = [f"CONNECT {self.host}:{self.port} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 *(f"{k}: {v}" for k, v in self._proxy_headers.items())]
        outer.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        reply = b""
        while b"\r\n\r\n" not in reply:  # byte by byte: nothing of the origin's TLS may be read here
            byte = outer.recv(1)
            if not byte:
                outer.close()
                raise OSError("the proxy closed the connection during CONNECT")
            reply += byte
        status = reply.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status.split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            outer.close()
            raise OSError(f"Tunnel connection failed: {' '.join(parts[1:]) or status}")
        self.sock = _InnerTLS(outer, self._context, self.host)


class _InnerTLS:
    """Just enough of a socket for http.client: TLS through memory BIOs over another TLS socket."""

    def __init__(self, outer: ssl.SSLSocket, context: ssl.SSLContext, server_hostname: str) -> None:
        self._outer = outer
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._pump(self._tls.do_handshake)

    def _pump(self, operation, *args):
        while True:
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                self._flush()
                data = self._outer.recv(256 * 1024)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            self._flush()
            return result

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self._outer.sendall(pending)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._pump(self._tls.write, view):]

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        try:
            return self._pump(self._tls.read, nbytes or len(buffer), buffer)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return 0

    def makefile(self, mode: str = "rb", buffering: int | None = None) -> io.BufferedReader:
        return io.BufferedReader(_Reader(self))

    def settimeout(self, value: float | None) -> None:
        self._outer.settimeout(value)

    def close(self) -> None:
        self._outer.close()


class _Reader(io.RawIOBase):
    def __init__(self, sock: _InnerTLS) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._sock.recv_into(buffer)
