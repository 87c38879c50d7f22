"""A real forward proxy for tests: absolute-URI requests and CONNECT tunnels, optionally behind
TLS (an `https://` proxy) and optionally demanding credentials (407 otherwise), with a log of
what it was asked (which is how a test counts a client's GETs and HEADs); it can leave out
response headers to HEAD requests, as a registry that answers HEAD without a digest does. Also a TLS front for a plain-http server (an `https://` origin), and a
throwaway certificate authority to sign both (cryptography, a test dependency)."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
               "transfer-encoding", "upgrade"}


@dataclass
class CertificateAuthority:
    """A CA certificate (ca.pem) and one server certificate for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, where: Path) -> "CertificateAuthority":
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "builder test CA")])
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        where.mkdir(parents=True, exist_ok=True)
        paths = cls(where / "ca.pem", where / "server.pem", where / "server.key")
        paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        return paths

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


@dataclass
class ProxyRequest:
    method: str
    target: str
    authorized: bool


@dataclass
class _State:
    credentials: tuple[str, str] | None
    drop_on_head: frozenset[str] = frozenset()  # response headers (lower case) left out of HEAD answers
    log: list[ProxyRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Relay bytes both ways until either side closes."""
    sockets = [a, b]
    try:
        while True:  # a TLS socket may hold a decrypted record select() cannot see: pending()
            buffered = [s for s in sockets if isinstance(s, ssl.SSLSocket) and s.pending()]
            readable = buffered or select.select(sockets, [], [], 30)[0]
            if not readable:
                return
            for sock in readable:
                data = sock.recv(256 * 1024)
                if not data:
                    return
                (b if sock is a else a).sendall(data)
    except OSError:
        return


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return

    def _authorized(self) -> bool:
        if self.state.credentials is None:
            return True
        expected = base64.b64encode(":".join(self.state.credentials).encode()).decode()
        return self.headers.get("Proxy-Authorization", "") == f"Basic {expected}"

    def _admit(self) -> bool:
        ok = self._authorized()
        with self.state.lock:
            self.state.log.append(ProxyRequest(self.command, self.path, ok))
        if not ok:
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="proxy"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        return ok

    def do_CONNECT(self) -> None:  # noqa: N802 - http.server's naming
        if not self._admit():
            return
        host, _, port = self.path.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=30)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        _pipe(self.connection, upstream)
        upstream.close()
        self.close_connection = True

    def _forward(self) -> None:
        if not self._admit():
            return
        if not self.path.startswith("http://"):
            self.send_error(400, "absolute URI expected")
            return
        rest = self.path[len("http://"):]
        netloc, _, path = rest.partition("/")
        host, _, port = netloc.partition(":")
        upstream = http.client.HTTPConnection(host, int(port or 80), timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream.request(self.command, "/" + path, headers=headers)
        response = upstream.getresponse()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            dropped = self.command == "HEAD" and key.lower() in self.state.drop_on_head
            if key.lower() not in _HOP_BY_HOP and not dropped:
                self.send_header(key, value)
        self.end_headers()
        while self.command != "HEAD" and (chunk := response.read(256 * 1024)):
            self.wfile.write(chunk)
        upstream.close()

    do_GET = do_HEAD = _forward  # noqa: N815 - http.server's naming


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, address


class ForwardProxy:
    """with ForwardProxy(credentials=("user", "pw"), tls=ca) as proxy: proxy.url(...)"""

    def __init__(self, credentials: tuple[str, str] | None = None, tls: CertificateAuthority | None = None,
                 drop_on_head: frozenset[str] = frozenset()) -> None:
        self.state = _State(credentials, drop_on_head)
        handler = type("Handler", (_ProxyHandler,), {"state": self.state})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.tls = tls.server_context() if tls else None
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"{self.scheme}://{auth}127.0.0.1:{self._server.server_address[1]}"

    @property
    def log(self) -> list[ProxyRequest]:
        with self.state.lock:
            return list(self.state.log)

    def __enter__(self) -> "ForwardProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class TLSFront:
    """An https:// origin in front of a plain-http server on 127.0.0.1:port (bytes relayed as they are)."""

    def __init__(self, port: int, ca: CertificateAuthority) -> None:
        self._target = port
        self._context = ca.server_context()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            inner = self._context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError):
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self._target), timeout=30)
        try:
            while True:  # a TLS socket may hold a decrypted record select() cannot see: pending()
                readable = [inner] if inner.pending() else select.select([inner, upstream], [], [], 30)[0]
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(256 * 1024)
                    if not data:
                        return
                    (upstream if sock is inner else inner).sendall(data)
        except OSError:
            return
        finally:
            upstream.close()
            inner.close()

    def __enter__(self) -> "TLSFront":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
