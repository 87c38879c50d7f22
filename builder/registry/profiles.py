"""How each registry people push to really behaves, keyed by its host, from public reports.

The distribution spec leaves room (chunk sizes, the closing PUT, mounts), and the big hosted
registries fill it differently. A profile says what the push must do there; a registry nobody
listed gets the default, which follows the spec and learns limits from the registry's own answers
(`OCI-Chunk-Min-Length` on the POST, a 413, a 416 whose body names a limit). `push.registries` in
the builder configuration names a profile for a host that cannot be recognised by its name (a
GitHub Enterprise or a Harbor on a host of its own, or a test's stand-in).

Standard library only: builder/config.py reads the layer limits from here.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Profile:
    """What a registry allows. Sizes in bytes; None: no limit known."""

    name: str
    hosts: tuple[str, ...] = ()  # shell patterns of the hosts this profile is for
    api_host: str | None = None  # where the API answers when people type another name
    credential_host: str | None = None  # the name `docker login` files the credentials under
    max_chunk: int | None = None  # the largest PATCH body sent with Content-Range
    min_chunk: int = 0  # the smallest part but the last one
    streamed: bool = False  # large blobs in one PATCH without Content-Range, as `docker push` sends them
    last_part_in_put: bool = False  # the closing PUT carries the last part (an empty one fails)
    patch_answers_created: bool = False  # a PATCH may answer 201 rather than the spec's 202
    trust_range: bool = True  # the Range a PATCH or GET answers is what the registry holds
    max_layer_bytes: int | None = None
    source: str = ""  # where the facts come from


DEFAULT = Profile(
    "default",
    source="https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pushing-blobs",
)

PROFILES: tuple[Profile, ...] = (
    # GHCR refuses a chunk over 4 MiB with 416 REQUESTED_RANGE_NOT_SATISFIABLE "the request body is
    # too large and exceeds the maximum permissible limit of 4.00MiB" (oras-project/rust-oci-client#35,
    # wasmCloud/wash#268 (now wash-archive#268), ocx-sh/ocx#237), while `docker push`'s one PATCH
    # without Content-Range goes through, as does a PUT without it (cirruslabs/tart#179). Layers
    # are capped at 10 GB (GitHub's Packages documentation).
    Profile("ghcr", ("ghcr.io", "containers.pkg.github.com"), max_chunk=4 * MIB, streamed=True,
            max_layer_bytes=10 * 10**9,
            source="oras-project/rust-oci-client#35; ocx-sh/ocx#237; cirruslabs/tart#179"),
    # Docker Hub: the API is registry-1.docker.io (docker.io answers /v2/ with a redirect to a web
    # page); `docker login` files the credentials under https://index.docker.io/v1/ (moby's
    # registry config; docker/cli#5379); tokens live 300 s (moby/moby#29257); a manifest GET counts
    # against the pull limit, a HEAD does not (Docker Hub's "pull usage and limits" page).
    Profile("dockerhub", ("docker.io", "index.docker.io", "registry-1.docker.io"), api_host="registry-1.docker.io",
            credential_host="docker.io",
            source="docker/cli#5379; moby/moby#29257; docs.docker.com/docker-hub/usage/pulls/"),
    # ECR: parts of at least 5 MiB but the last (LayerPartTooSmallException) and at most 20 MiB
    # (UploadLayerPart, 20971520 bytes); an empty closing PUT after chunks fails with a bare 500,
    # so the last part goes in it (cirruslabs/tart#159); a PATCH may answer 201 and its Range
    # stops advancing after the first part (cirruslabs/tart#273, aws/containers-roadmap#2831); a
    # mount it cannot make answers 202 with an upload session (aws/containers-roadmap#2860).
    Profile("ecr", ("*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn", "public.ecr.aws"),
            max_chunk=20 * MIB, min_chunk=5 * MIB, last_part_in_put=True, patch_answers_created=True,
            trust_range=False,
            source="cirruslabs/tart#159, #273; aws/containers-roadmap#2831, #2860; ECR API UploadLayerPart"),
    # Google Artifact Registry (and gcr.io): upload locations on another path, and chunked
    # pushes that do not follow the spec; clients push monolithically or streamed
    # (oras-project/rust-oci-client#175, #177).
    Profile("gar", ("*-docker.pkg.dev", "gcr.io", "*.gcr.io"), streamed=True,
            source="oras-project/rust-oci-client#175, #177"),
    # Quay: chunked uploads as the spec says (quay/quay#325), a minimum part size where its
    # storage is S3 (quay/quay#2949), announced by OCI-Chunk-Min-Length.
    Profile("quay", ("quay.io",), source="quay/quay#325, #2949"),
    # Harbor has no host of its own: it is the default, plus what every profile does with a
    # mount it refuses with 401 (goharbor/harbor#17097): upload instead. Name it in push.registries.
    Profile("harbor", (), source="goharbor/harbor#17097"),
)

_BY_NAME = {p.name: p for p in (DEFAULT, *PROFILES)}


def names() -> list[str]:
    return sorted(_BY_NAME)


def by_name(name: str) -> Profile:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown registry profile {name!r}: expected one of {', '.join(names())}") from None


def profile_for(host: str, configured: dict[str, str] | None = None) -> Profile:
    """The profile of HOST[:PORT]: a configured one, else the one whose hosts match, else the default."""
    if configured and host in configured:
        return by_name(configured[host])
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    for profile in PROFILES:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in profile.hosts):
            return profile
    return DEFAULT


_LIMIT = re.compile(r"(?:limit|maximum)[^0-9]{0,40}?([0-9]+(?:\.[0-9]+)?)\s*([KMG]i?B|bytes|B)\b", re.IGNORECASE)
_UNITS = {"b": 1, "bytes": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def body_limit(text: str) -> int | None:
    """The request body limit a refusal names ("exceeds the maximum permissible limit of 4.00MiB"),
    in bytes, or None when it names none."""
    match = _LIMIT.search(text or "")
    if not match:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
