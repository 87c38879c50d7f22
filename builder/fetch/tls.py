"""Which certificate authorities a download trusts: the system's, plus any the user adds.

`SSL_CERT_FILE` (and `SSL_CERT_DIR`) conventionally *replace* the system store, in OpenSSL and in
httpx, which huggingface_hub uses. A corporate CA handed in for a TLS-intercepting proxy must
instead *add* to it: the proxy intercepts the Hub, but a mirror or CDN reached directly still
presents a public certificate. So the range client's context loads the system store from the
compiled-in paths and then the user's, and `trust_additional_cas` points SSL_CERT_FILE (read by
huggingface_hub's client and by the standard library) at a bundle that holds both.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import ssl
import tempfile
from pathlib import Path

# Where distributions keep the system bundle when OpenSSL's compiled-in path has none.
_SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem",
                   "/etc/ssl/ca-bundle.pem")
_MARK = "# builder: the system's CAs plus SSL_CERT_FILE's\n"


def system_bundle() -> Path | None:
    """The system's CA bundle file (not what SSL_CERT_FILE names)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.openssl_cafile, *_SYSTEM_BUNDLES):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    return None


def context() -> ssl.SSLContext:
    """A client context trusting the system store plus SSL_CERT_FILE and SSL_CERT_DIR."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    paths = ssl.get_default_verify_paths()
    bundle = system_bundle()
    capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if bundle or capath:
        ctx.load_verify_locations(cafile=str(bundle) if bundle else None, capath=capath)
    extra_file, extra_dir = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if extra_file and os.path.isfile(extra_file):
        ctx.load_verify_locations(cafile=extra_file)
    if extra_dir and os.path.isdir(extra_dir):
        ctx.load_verify_locations(capath=extra_dir)
    return ctx


def trust_additional_cas(extra: Path | None = None) -> Path | None:
    """Point SSL_CERT_FILE (and requests' variables) at a bundle of the system's CAs plus extra,
    or plus what SSL_CERT_FILE named already. Returns the bundle, or None when nothing is added."""
    source = extra or (Path(os.environ["SSL_CERT_FILE"]) if os.environ.get("SSL_CERT_FILE") else None)
    if source is None or not source.is_file():
        return None
    added = source.read_text(encoding="utf-8", errors="replace")
    if added.startswith(_MARK):
        return source  # already a combined bundle (a parent process made it)
    system = system_bundle()
    fd, name = tempfile.mkstemp(prefix="builder-ca-", suffix=".pem")
    with os.fdopen(fd, "w", encoding="utf-8") as bundle:
        bundle.write(_MARK)
        if system is not None:
            bundle.write(system.read_text(encoding="utf-8", errors="replace").rstrip("\n") + "\n")
        bundle.write(added)
    atexit.register(_remove, name)
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ[var] = name
    return Path(name)


def _remove(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)
