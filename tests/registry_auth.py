"""Auth in front of a real registry: htpasswd files, and a token service of the tests' own.

Distribution checks Bearer tokens itself (`auth: token:` in its configuration): a JWT signed by
a key whose certificate is in its `rootcertbundle`, with the certificate in the token's `x5c`
header, and claims naming the issuer, the service and the granted `access`
(https://distribution.github.io/distribution/spec/auth/jwt/). The issuer here is a small HTTP
server that knows one user, grants what it is asked for to that user (pull only to anonymous
callers) but nothing on the repositories it is told to deny, as Docker Hub's auth.docker.io
answers a scope it will not grant with a token that lacks it, records every request, and can be
told to issue tokens that expire at once.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

SERVICE = "builder-test-registry"
ISSUER = "builder-test-issuer"


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file (bcrypt, the only scheme distribution accepts)."""
    path.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}\n" for u, p in users.items()))
    return path


def htpasswd_auth(path: Path) -> dict:
    return {"htpasswd": {"realm": "builder-test", "path": str(path)}}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    url: str
    cert_file: Path
    requests: list[dict] = field(default_factory=list)
    lifetime: float = 300.0  # seconds in the token's exp claim
    users: dict[str, str] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)  # repositories no one is granted anything on

    def registry_auth(self) -> dict:
        return {"token": {"realm": f"{self.url}/token", "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.cert_file)}}


@contextmanager
def token_service(workdir: Path, users: dict[str, str]) -> Iterator[TokenService]:
    workdir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file = workdir / "issuer.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    service = TokenService("", cert_file, users=dict(users))

    def issue(subject: str, access: list[dict]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
        issued = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": issued + int(service.lifetime),
                  "nbf": issued - 5, "iat": issued, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802
            query = parse_qs(urlsplit(self.path).query)
            user = None
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                if service.users.get(name) != password:
                    service.requests.append({"user": name, "refused": True, "scopes": query.get("scope", [])})
                    self.send_response(401)
                    self.end_headers()
                    return
                user = name
            access = []
            for text in query.get("scope", []):
                kind, _, rest = text.partition(":")
                repo, _, actions = rest.rpartition(":")
                allowed = [a for a in actions.split(",") if (user or a == "pull") and repo not in service.denied]
                access.append({"type": kind, "name": repo, "actions": allowed})
            service.requests.append({"user": user, "scopes": query.get("scope", []), "service": query.get("service")})
            body = json.dumps({"token": issue(user or "", access), "expires_in": int(service.lifetime)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    service.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
