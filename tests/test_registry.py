"""Registry references and the registry API client, against a real registry where it counts."""

from __future__ import annotations

import pytest

from builder.errors import InputError, RegistryError, Unreachable
from builder.registry import RegistryClient, RegistryRef


@pytest.mark.parametrize(
    ("text", "host", "namespace", "repository", "base_url"),
    [
        ("127.0.0.1:5000", "127.0.0.1:5000", None, "127.0.0.1:5000/flux", "http://127.0.0.1:5000"),
        ("ghcr.io/acme", "ghcr.io", "acme", "ghcr.io/acme/flux", "https://ghcr.io"),
        ("localhost:5000/team/models/", "localhost:5000", "team/models", "localhost:5000/team/models/flux", "http://localhost:5000"),
        ("123456789.dkr.ecr.eu-west-1.amazonaws.com", "123456789.dkr.ecr.eu-west-1.amazonaws.com", None,
         "123456789.dkr.ecr.eu-west-1.amazonaws.com/flux", "https://123456789.dkr.ecr.eu-west-1.amazonaws.com"),
    ],
)
def test_registry_references(text, host, namespace, repository, base_url) -> None:
    ref = RegistryRef.parse(text)
    assert (ref.host, ref.namespace, ref.repository("flux"), ref.base_url) == (host, namespace, repository, base_url)


@pytest.mark.parametrize("text", ["ghcr", "GHCR.io/acme", "ghcr.io/Acme", "ghcr.io/acme;rm", "", "127.0.0.1:5000/a b"])
def test_bad_registry_references(text: str) -> None:
    with pytest.raises(InputError, match="expected HOST"):
        RegistryRef.parse(text)


def test_unknown_repository_and_tag(registry: str) -> None:
    client = RegistryClient(RegistryRef.parse(f"{registry}/nothing-here"))
    assert client.image("absent", "1.0") is None
    assert client.tags("absent") == []
    assert client.config("absent", "1.0") is None


def test_an_unreachable_registry_is_one_line() -> None:
    client = RegistryClient(RegistryRef.parse("127.0.0.1:9"), timeout=2)
    with pytest.raises(Unreachable, match=r"cannot reach the registry at http://127.0.0.1:9 \(connection refused\)"):
        client.image("x", "1")
