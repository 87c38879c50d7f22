"""The weights store's reader inside the build stage (builder/fetch/oci.py) keeps its pull token
alive: asked for again before it expires (Docker Hub's last 300 s) and once more when refused."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from builder.fetch.oci import RAW_FILE, OciStore
from builder.registry import RegistryClient, RegistryRef
from builder.registry.client import EMPTY_BLOB, OCI_EMPTY, OCI_MANIFEST
from tests.engines import scratch_registry
from tests.registry_auth import token_service


def _publish(client: RegistryClient, repository: str, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    digest = client.put_blob(repository, data)
    empty = client.put_blob(repository, EMPTY_BLOB)
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": RAW_FILE, "digest": digest, "size": len(data)}],
            "annotations": {"io.builder.weights.size": str(len(data))}}
    client.put_manifest(repository, f"sha256-{sha}", json.dumps(body).encode(), OCI_MANIFEST)
    return sha


def test_the_weights_store_token_is_renewed_before_it_expires_and_after_a_refusal(tmp_path: Path, monkeypatch,
                                                                                 docker_ready) -> None:
    monkeypatch.setenv("BUILDER_REGISTRY_USERNAME", "dana")
    monkeypatch.setenv("BUILDER_REGISTRY_PASSWORD", "pw")
    with token_service(tmp_path / "tokens", {"dana": "pw"}) as tokens, \
            scratch_registry(tmp_path / "registry", auth=tokens.registry_auth()) as address:
        writer = RegistryClient(RegistryRef.parse(address))
        files = [os.urandom(1000 + i) for i in range(3)]
        shas = [_publish(writer, "team/weights", data) for data in files]
        tokens.lifetime = 2  # the registry refuses these after 2 s; the store renews at half of that
        store = OciStore(f"oci://{address}/team/weights", ("dana", "pw"))

        def read(i: int) -> bytes:
            chunks, size = store.open(shas[i])
            return b"".join(chunks)

        assert read(0) == files[0]
        asked = len(tokens.requests)
        time.sleep(2.5)  # past the first token's exp (distribution would take it for a minute more: it must not wait)
        assert read(1) == files[1]
        assert len(tokens.requests) == asked + 1  # renewed before the request: the registry never refused it

        tokens.lifetime = 300
        store.token, store.expires = "revoked-or-expired", time.monotonic() + 300  # one the registry will refuse
        assert read(2) == files[2]
        assert len(tokens.requests) == asked + 2
