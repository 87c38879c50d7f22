"""The fetch engine's way through networks as companies have them: authenticating proxies, proxies
reached over TLS, https mirrors behind them, and a corporate CA that adds to the system's CAs.

Real parts only: the loopback Hub, a real forward proxy (tests/forward_proxy.py) and certificates
from a throwaway CA; each case runs `python -m builder.fetch` as the weights stage does."""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path

import pytest

from builder.fetch import tls
from builder.fetch.ranges import RangeClient
from tests.forward_proxy import CertificateAuthority, ForwardProxy, TLSFront
from tests.localhub import LocalHub
from builder.fetch import ContentCache
from tests.test_fetch import big_repo, fetch_config, run_fetch  # noqa: F401 - big_repo is a fixture

PROXY_USER, PROXY_PASSWORD = "fetcher", "proxy-pw-7f3a9c"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
               "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))


def _env(**values: str) -> dict[str, str | None]:
    """The fetch's environment: these proxy and CA variables, and none inherited."""
    return {**dict.fromkeys(_PROXY_VARS), **values}


def _check_fetched(result, plan: dict, cache: Path) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    big = plan["files"][3]["sha256"]
    assert hashlib.sha256(ContentCache(cache).blob(big).read_bytes()).hexdigest() == big
    assert PROXY_PASSWORD not in result.stdout + result.stderr


def test_a_plain_http_mirror_through_an_authenticating_proxy(big_repo, hub: LocalHub, tmp_path: Path) -> None:
    _, plan = big_repo
    with ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        result = run_fetch(plan, tmp_path / "cache", fetch_config(tmp_path, ("local", hub.url)),
                           tmp_path, env=_env(HTTP_PROXY=proxy.url(PROXY_USER, PROXY_PASSWORD)))
        log = proxy.log
    _check_fetched(result, plan, tmp_path / "cache")
    gets = [r for r in log if r.method == "GET" and r.target.endswith("big.bin")]
    assert len(gets) == 6, log  # 48 MiB in 8 MiB ranges, every one through the proxy
    assert all(r.authorized for r in log), [r for r in log if not r.authorized]
    assert all(r.target.startswith("http://127.0.0.1:") for r in gets)  # absolute URIs, no userinfo


def test_an_https_proxy_url(big_repo, hub: LocalHub, ca: CertificateAuthority, tmp_path: Path) -> None:
    _, plan = big_repo
    with ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD), tls=ca) as proxy:
        result = run_fetch(plan, tmp_path / "cache", fetch_config(tmp_path, ("local", hub.url)),
                           tmp_path, env=_env(HTTP_PROXY=proxy.url(PROXY_USER, PROXY_PASSWORD), SSL_CERT_FILE=str(ca.ca)))
        log = proxy.log
    _check_fetched(result, plan, tmp_path / "cache")
    assert [r for r in log if r.method == "GET" and r.target.endswith("big.bin")] and all(r.authorized for r in log)


def test_an_https_mirror_through_an_https_proxy(big_repo, hub: LocalHub, ca: CertificateAuthority, tmp_path: Path) -> None:
    """TLS to the proxy, CONNECT inside it, TLS to the mirror inside that."""
    _, plan = big_repo
    with TLSFront(int(hub.url.rsplit(":", 1)[1]), ca) as front, \
            ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD), tls=ca) as proxy:
        result = run_fetch(plan, tmp_path / "cache", fetch_config(tmp_path, ("tls", front.url)),
                           tmp_path, env=_env(HTTPS_PROXY=proxy.url(PROXY_USER, PROXY_PASSWORD), SSL_CERT_FILE=str(ca.ca)))
        log = proxy.log
    _check_fetched(result, plan, tmp_path / "cache")
    tunnels = [r for r in log if r.method == "CONNECT"]
    assert tunnels and all(r.target == front.url.removeprefix("https://") and r.authorized for r in tunnels)
    assert not [r for r in log if r.method != "CONNECT"]


def test_ssl_cert_file_adds_to_the_system_store(ca: CertificateAuthority, monkeypatch, tmp_path: Path) -> None:
    system = tls.system_bundle()
    if system is None:
        pytest.skip("no system CA bundle on this machine")
    system_count = ssl.create_default_context(cafile=str(system)).cert_store_stats()["x509_ca"]
    assert system_count > 1
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca))
    # what the range client trusts: the system's CAs and the added one
    trusted = RangeClient(1, 1)._tls
    assert trusted.cert_store_stats()["x509_ca"] == system_count + 1
    assert any(dict(x[0] for x in c["subject"]).get("commonName") == "builder test CA" for c in trusted.get_ca_certs())
    # what huggingface_hub's client (httpx) and the standard library read: one bundle with both
    monkeypatch.setattr(tls.tempfile, "tempdir", str(tmp_path))
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)  # restored after the test, like SSL_CERT_FILE
    bundle = tls.trust_additional_cas()
    assert bundle is not None and os.environ["SSL_CERT_FILE"] == str(bundle)
    assert ssl.create_default_context(cafile=str(bundle)).cert_store_stats()["x509_ca"] == system_count + 1
