"""Registry profiles, limits learnt from refusals, Docker Hub's names and credentials, and a /v2/
check that a web page does not pass. No engine needed."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builder.config import PushConfig
from builder.errors import RegistryError
from builder.registry import RegistryClient, RegistryRef, profiles
from builder.registry.client import Refused
from builder.registry.blobs import MIB, Limits
from tests.registry_standin import GHCR_TOO_LARGE


@pytest.mark.parametrize(("host", "name"), [
    ("ghcr.io", "ghcr"), ("docker.io", "dockerhub"), ("index.docker.io", "dockerhub"),
    ("registry-1.docker.io", "dockerhub"), ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "ecr"),
    ("public.ecr.aws", "ecr"), ("europe-west4-docker.pkg.dev", "gar"), ("gcr.io", "gar"), ("quay.io", "quay"),
    ("registry.example.com:5000", "default"), ("127.0.0.1:5000", "default"),
])
def test_a_registry_is_known_by_its_host(host: str, name: str) -> None:
    assert profiles.profile_for(host).name == name


def test_the_configuration_names_a_profile_for_a_host_of_its_own() -> None:
    config = PushConfig(registries={"harbor.internal:8443": "harbor", "127.0.0.1:5001": "ghcr"})
    assert config.profile("harbor.internal:8443").name == "harbor"
    assert config.profile("127.0.0.1:5001").max_chunk == 4 * MIB
    assert config.max_layer_bytes("127.0.0.1:5001") == 10 * 10**9  # GHCR's 10 GB, on the host it stands in for
    assert config.max_layer_bytes("ghcr.io") == 10 * 10**9 and config.max_layer_bytes("quay.io") is None
    with pytest.raises(ValueError, match="unknown registry profile 'gchr': expected one of default, dockerhub"):
        PushConfig(registries={"x.io": "gchr"})


def test_the_limit_a_refusal_names() -> None:
    assert profiles.body_limit(GHCR_TOO_LARGE.decode()) == 4 * MIB
    assert profiles.body_limit("request body exceeds the limit of 100MB") == 100 * 10**6
    assert profiles.body_limit("<html><title>413 Request Entity Too Large</title></html>") is None


def test_a_416_that_names_a_body_limit_shrinks_the_chunks_like_a_413() -> None:
    limits = Limits(profiles.DEFAULT, 64 * MIB)
    assert not limits.learn(Refused("range", 416, '{"errors":[{"code":"BLOB_UPLOAD_INVALID"}]}'), 64 * MIB)
    assert limits.chunk_for() == 64 * MIB  # a 416 about the offset is not a limit
    assert limits.learn(Refused("too large", 416, GHCR_TOO_LARGE.decode()), 64 * MIB)
    assert limits.chunk_for() == 4 * MIB
    assert limits.learn(Refused("nginx", 413, "<html>413</html>"), 4 * MIB)
    assert limits.chunk_for() == 2 * MIB  # a bare 413: half of what was refused
    assert limits.chunk_for(minimum=3 * MIB) == 3 * MIB  # the registry's OCI-Chunk-Min-Length wins
    ecr = Limits(profiles.by_name("ecr"), 64 * MIB)
    assert ecr.chunk_for() == 20 * MIB and ecr.chunk_for(minimum=0) >= 5 * MIB


def test_docker_hub_is_reached_at_its_api_host_with_the_credentials_docker_login_stored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("BUILDER_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("BUILDER_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    secret = base64.b64encode(b"hubuser:hubpass").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": secret}}}))
    for name in ("docker.io/acme", "index.docker.io/acme", "registry-1.docker.io/acme"):
        ref = RegistryRef.parse(name)
        assert ref.base_url == "https://registry-1.docker.io"
        found = RegistryClient(ref).auth.credentials
        assert found is not None and (found.username, found.password) == ("hubuser", "hubpass"), name
    assert RegistryRef.parse("docker.io/acme").repository("flux") == "docker.io/acme/flux"  # what docker tags


class _Site(BaseHTTPRequestHandler):
    """A web server: /v2/ redirects to a page, or is a page."""

    mode = "redirect"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/v2/" and self.mode == "redirect":
            self.send_response(301)
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"<!DOCTYPE html><html><body>Welcome</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("mode", ["redirect", "page"])
def test_a_web_page_is_not_a_registry(mode: str) -> None:
    handler = type("Site", (_Site,), {"mode": mode})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = RegistryClient(RegistryRef.parse(f"127.0.0.1:{server.server_address[1]}"))
        with pytest.raises(RegistryError, match=r"(redirects to /|answered with a web page).*is --registry a container registry"):
            client.check()
    finally:
        server.shutdown()
        server.server_close()


def test_a_real_registry_passes_the_check(registry: str) -> None:
    RegistryClient(RegistryRef.parse(registry)).check()


def test_mount_sources_are_remembered_per_credentials_and_never_with_them(tmp_path: Path) -> None:
    """moby mounts only from repositories pushed with the same credentials (moby/moby#26564)."""
    from builder.registry.auth import Credentials
    from builder.registry.push import _State

    alice = Credentials("alice", "alice-password-1").fingerprint()
    _State(tmp_path, "reg.example", alice).remember_holder("sha256:" + "1" * 64, "team/a")
    assert _State(tmp_path, "reg.example", alice).holders("sha256:" + "1" * 64) == ["team/a"]
    assert _State(tmp_path, "reg.example", Credentials("bob", "pw").fingerprint()).holders("sha256:" + "1" * 64) == []
    assert _State(tmp_path, "reg.example").holders("sha256:" + "1" * 64) == []  # anonymous
    assert _State(tmp_path, "other.example", alice).holders("sha256:" + "1" * 64) == []
    assert "alice-password-1" not in (tmp_path / "blobs.json").read_text()
