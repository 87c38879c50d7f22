"""The OCI registry: references, the HTTP API client, its auth, and the builder's own push."""

from builder.registry.client import (
    MANIFEST_TYPES,
    SMOKE_MEDIA_TYPE,
    RegistryClient,
    RegistryRef,
    RemoteImage,
    smoke_tag,
)

__all__ = ["MANIFEST_TYPES", "SMOKE_MEDIA_TYPE", "RegistryClient", "RegistryRef", "RemoteImage", "smoke_tag"]
