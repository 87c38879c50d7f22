"""The build command's flow: render -> build -> smoke -> tag -> push.

Nothing is tagged before the smoke passed and nothing is pushed unless it passed; a version
already in the registry with other content is refused, the same content is a no-op. The token
goes to the build only as a BuildKit secret file outside the build context, and is scrubbed
from the log we echo.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder import __version__
from builder.config import BuilderConfig, PushConfig
from builder.docker import BuildRequest, Docker
from builder.errors import BuilderError, ConfigError, InputError, ManifestError, RegistryError, SmokeTestFailed
from builder.fetch import Attempt, FetchConfig, parse_attempt
from builder.ledger import Ledger
from builder.manifest import Manifest
from builder.project import Project
from builder.redact import SECRETS, remember
from builder.registry import RegistryClient, RegistryRef, smoke_tag
from builder.registry.auth import find_credentials
from builder.registry.layers import EngineLayers, LayersUnavailable
from builder.registry.weights import WeightsStore
from builder.registry.push import MIB, Pusher, PushSettings
from builder.render import DEFAULT_PORT, RenderOptions, layer_limit_problems, write_context

Say = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
    registry: str | None = None
    push: bool = True
    base_image: str | None = None
    gpus: str = "auto"  # auto | all | none
    no_cache: bool = False
    network: str = "auto"  # build steps: host where the engine has no bridge network (docker.network_for)
    ca_bundle: Path | None = None
    pip_conf: Path | None = None
    hf_endpoint: str | None = None  # must be an approved mirror; tried first


@dataclass(frozen=True)
class Services:
    """What a build talks to besides the engine, passed in explicitly."""

    config: BuilderConfig
    ledger: Ledger

    def fetch_config(self, endpoint: str | None = None) -> FetchConfig:
        """The mirrors in the order to try: endpoint (default $HF_ENDPOINT) first, then as the
        ledger ranks them, with the configured tuning."""
        return self.config.fetch_config(endpoint or os.environ.get("HF_ENDPOINT"), self.ledger.mirror_ranking())


@dataclass
class BuildResult:
    name: str
    version: str
    image_id: str
    smoke: dict[str, Any]
    tag: str
    digest_reference: str | None = None
    pushed: bool = False
    already_in_registry: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    run_commands: list[str] = field(default_factory=list)
    downloaded_bytes: int = 0
    build_id: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def hub_token() -> str | None:
    """The Hub token the way huggingface_hub finds it: $HF_TOKEN, then the saved login."""
    from huggingface_hub import get_token

    token = get_token()
    token = token.strip() if token else None
    remember(token)
    return token


def _check_inputs(manifest: Manifest, origin: str, options: BuildOptions, token: str | None) -> RegistryRef | None:
    if not manifest.locked and manifest.profile != "experimental":
        items = manifest.unlocked_items()
        raise ManifestError(
            f"{origin}: not locked ({len(items)} unpinned: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}): "
            f"run `python -m builder lock {manifest.name}` or set profile: experimental"
        )
    gated = [s.repo_id for s in manifest.sources if s.gated]
    if gated and token is None:
        raise ConfigError(
            f"{origin}: {', '.join(gated)} is gated and no Hub token is set: accept the licence on the model page "
            f"and set HF_TOKEN (or run `hf auth login`)"
        )
    for flag, path in (("--ca-bundle", options.ca_bundle), ("--pip-conf", options.pip_conf)):
        if path is not None and not path.is_file():
            raise InputError(f"{flag} {path}: no such file")
    if options.pip_conf is not None:
        SECRETS.add_pip_conf(options.pip_conf)  # index credentials: for pip in the build, never shown
    if options.push and not options.registry:
        raise InputError("no registry to push to: pass --registry HOST[:PORT][/NAMESPACE], set BUILDER_REGISTRY, or --no-push")
    return RegistryRef.parse(options.registry) if options.registry else None


def run_build(
    manifest: Manifest,
    origin: str,
    project: Project,
    options: BuildOptions,
    services: Services,
    connect: Callable[[], Docker],
    say: Say,
    on_build_line: Callable[[str], None],
    on_push_event: Callable[[dict], None] = lambda event: None,
) -> BuildResult:
    token = hub_token()
    registry = _check_inputs(manifest, origin, options, token)
    too_large = layer_limit_problems(manifest, origin, services.config.push.max_layer_bytes(registry.host if registry else None))
    if too_large and options.push:
        raise ManifestError.with_problems(too_large)
    if registry is not None and options.push:
        RegistryClient(registry).check()
    fetch_config = services.fetch_config(options.hf_endpoint)
    docker = connect()  # after the input checks: bad input is reported even where no engine runs
    gpus = options.gpus != "none" and docker.has_gpu_runtime()
    if options.gpus == "all" and not gpus:
        raise ConfigError("--gpus all: this Docker engine has no NVIDIA runtime: install nvidia-container-toolkit or use --gpus auto")
    build_id = uuid.uuid4().hex
    git_commit = project.git_revision()
    ledger = services.ledger
    ledger.start_build(build_id, manifest.name, manifest.version, manifest.digest, __version__, git_commit)
    ledger.record_weights(build_id, manifest.weights_bytes)  # issue 25: the dashboard's weights size per version
    state: dict[str, Any] = {"seconds": {}}
    try:
        result = _build_smoke_push(manifest, origin, options, fetch_config, token, registry, docker, gpus, build_id,
                                   git_commit, project, ledger, state, say, on_build_line, on_push_event,
                                   services.config.push)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        ledger.finish_build(build_id, status, image_id=state.get("image_id"), error=str(exc) or type(exc).__name__,
                            seconds=state["seconds"])
        raise
    status = "pushed" if result.pushed or result.already_in_registry else "built"
    ledger.finish_build(build_id, status, image_id=result.image_id, repository=result.tag.rsplit(":", 1)[0],
                        digest=result.digest_reference.split("@", 1)[1] if result.digest_reference else None,
                        layers=state.get("layers"), seconds=result.seconds)
    return _with_run_commands(result, manifest, docker, gpus)


def _build_smoke_push(manifest: Manifest, origin: str, options: BuildOptions, fetch_config, token: str | None,
                      registry: RegistryRef | None, docker: Docker, gpus: bool, build_id: str, git_commit: str | None,
                      project: Project, ledger: Ledger, state: dict[str, Any], say: Say,
                      on_build_line: Callable[[str], None], on_push_event: Callable[[Any], None],
                      push_config: PushConfig = PushConfig()) -> BuildResult:
    seconds: dict[str, float] = state["seconds"]
    render_options = RenderOptions(
        base_image=options.base_image,
        ca_bundle=options.ca_bundle is not None,
        source_revision=git_commit,
    )
    with tempfile.TemporaryDirectory(prefix="builder-ctx-") as ctx_dir, \
            tempfile.TemporaryDirectory(prefix="builder-secrets-") as secret_dir:
        context = write_context(manifest, origin, render_options, project, Path(ctx_dir) / "context")
        secrets: dict[str, Path] = {}
        if token is not None:
            token_file = Path(secret_dir) / "hf_token"
            token_file.touch(mode=0o600)
            token_file.write_text(token, encoding="utf-8")
            secrets["hf_token"] = token_file
        if options.ca_bundle is not None:
            secrets["ca_bundle"] = options.ca_bundle.resolve()
        if options.pip_conf is not None:
            secrets["pip_conf"] = options.pip_conf.resolve()
        store = weights_store_url(fetch_config)
        store_credentials = find_credentials(WeightsStore.parse(store).ref.host) if store else None
        if store_credentials is not None:  # for the registry weights store; a secret, like the token
            auth_file = Path(secret_dir) / "registry_auth"
            auth_file.touch(mode=0o600)
            auth_file.write_text(json.dumps({"username": store_credentials.username,
                                             "password": store_credentials.password}), encoding="utf-8")
            secrets["registry_auth"] = auth_file
        config_file = Path(secret_dir) / "fetch_config"
        config_file.write_text(json.dumps(fetch_config.to_json()), encoding="utf-8")
        secrets["fetch_config"] = config_file
        say(f"build {manifest.name}:{manifest.version} with {docker.build_tool.describe()}, "
            f"mirrors {', '.join(m.name for m in fetch_config.mirrors)}")
        attempts: list[Attempt] = []

        def on_line(line: str) -> None:
            attempt = parse_attempt(line)
            if attempt is not None:  # for the ledger, not the screen
                attempts.append(attempt)
                # Written as it happens: a build killed mid-download keeps the attempts it made.
                ledger.record_attempts([attempt], build_id)
            else:
                on_build_line(line)

        started = time.perf_counter()
        image_id = docker.build(
            BuildRequest(context, secrets, {"BUILDER_REBUILD": build_id} if options.no_cache else {},
                         options.network),
            on_line=on_line,
            scrub=[token] if token else [],
        )
        seconds["build"] = round(time.perf_counter() - started, 2)
    state["image_id"] = image_id
    state["layers"] = [{"diff_id": d} for d in docker.diff_ids(image_id)]
    downloaded = sum(a.bytes for a in attempts if a.outcome in ("ok", "retry", "failed"))
    say(f"built {image_id[:19]} in {seconds['build']:.1f}s"
        + (f", {len(attempts)} fetch attempt(s), {downloaded} bytes downloaded" if attempts else ", weights from the build cache"))

    say(f"smoke test in the image ({'GPU' if gpus else 'CPU'}, no network)")
    started = time.perf_counter()
    smoke = run_smoke(docker, image_id, manifest, gpus)
    seconds["smoke"] = round(time.perf_counter() - started, 2)
    ledger.record_smoke(build_id, image_id, smoke)
    if not smoke.get("passed"):
        raise SmokeTestFailed(
            f"{manifest.name}: smoke test failed: {smoke.get('reason') or 'no reason given'}; nothing was tagged or pushed"
        )
    say(f"smoke passed in {seconds['smoke']:.1f}s: {smoke_summary(smoke)}")

    repository = registry.repository(manifest.name) if registry else manifest.name
    docker.tag(image_id, repository, manifest.version)
    result = BuildResult(manifest.name, manifest.version, image_id, smoke, f"{repository}:{manifest.version}",
                         seconds=seconds, downloaded_bytes=downloaded, build_id=build_id)
    if registry is None or not options.push:
        return result

    client = RegistryClient(registry)
    attestation = {"passed": True, "smoke": smoke, "image_id": image_id, "version": manifest.version,
                   "manifest_digest": manifest.digest, "build_id": build_id, "builder_version": __version__,
                   "git_commit": git_commit}
    existing = client.image(manifest.name, manifest.version)
    if existing is not None:
        if not _same_image(client, manifest.name, existing, image_id):
            raise RegistryError(
                f"{result.tag} already exists with other content ({existing.digest}); versions are immutable: "
                f"bump version in {origin} (python -m builder bump {manifest.name}) and build again"
            )
        say(f"{result.tag} already holds this image: nothing to push")
        if client.get_document(manifest.name, smoke_tag(existing.digest)) is None:
            client.record_smoke(manifest.name, existing.digest, {**attestation, "digest": existing.digest})
        ledger.record_push(build_id, repository, manifest.version, existing.digest, "already_present")
        result.digest_reference = f"{repository}@{existing.digest}"
        result.already_in_registry = True
        publish_weights(manifest, fetch_config, client, existing.digest, image_id, docker, say)
        return result
    say(f"push {result.tag}")
    started = time.perf_counter()
    digest = push_image(docker, client, manifest.name, manifest.version, image_id, push_config, say, on_push_event)
    seconds["push"] = round(time.perf_counter() - started, 2)
    pushed = client.image(manifest.name, digest)
    if pushed is None or pushed.config_digest not in (None, image_id):
        raise RegistryError(f"the registry does not hold {repository}@{digest} after the push: check its logs")
    client.record_smoke(manifest.name, digest, {**attestation, "digest": digest})
    ledger.record_push(build_id, repository, manifest.version, digest, "pushed")
    layers = json.loads(client.manifest(manifest.name, digest)[0]).get("layers", [])
    state["layers"] = [{"digest": layer["digest"], "size": layer["size"]} for layer in layers]
    result.digest_reference = f"{repository}@{digest}"
    result.pushed = True
    publish_weights(manifest, fetch_config, client, digest, image_id, docker, say)
    return result


def weights_store_url(fetch_config: FetchConfig) -> str | None:
    """The registry weights store: the first `oci://` mirror, if the configuration names one."""
    return next((m.url for m in fetch_config.mirrors if m.url.startswith("oci://")), None)


def publish_weights(manifest: Manifest, fetch_config, client: RegistryClient, digest: str, image_id: str,
                    docker: Docker, say: Say) -> None:
    """Put each verified weights file in the registry weights store an `oci://` mirror names, for
    every later build on any host. The image is pushed and good either way: a failure here is a
    line, not a failed build."""
    store_url = weights_store_url(fetch_config)
    if store_url is None:
        return
    from builder.registry.weights import publish
    from builder.render import model_dir

    threshold = manifest.runtime.large_file_bytes
    files = []
    for source in manifest.sources:
        for artifact in source.artifacts:
            if not artifact.locked:
                continue
            large = (artifact.size or 0) >= threshold
            member = f"opt/weights/sha256/{artifact.sha256}" if large else \
                str(model_dir(manifest) / source.destination(artifact)).lstrip("/")
            files.append({"sha256": artifact.sha256, "size": artifact.size, "repo_id": source.repo_id,
                          "revision": source.revision, "path": artifact.path, "licence": manifest.license.spdx,
                          "gated": source.gated, "large": large, "member": member})
    try:
        store = WeightsStore.parse(store_url)
        try:
            layers = EngineLayers.open(docker.client)
        except LayersUnavailable:
            layers = None
        done = publish(store, client, manifest.name, digest, files, layers, image_id)
    except BuilderError as exc:
        say(f"weights store {store_url}: not published ({exc}); builds elsewhere fetch these files from the Hub")
        return
    say(f"weights store {store_url}: {done.new} file(s) published ({done.uploaded_bytes} bytes uploaded, the large "
        f"files' layers mounted), {done.present} already there"
        + (f"; not published: {', '.join(done.skipped[:3])}" if done.skipped else ""))


def push_image(docker: Docker, client: RegistryClient, name: str, tag: str, image_id: str, settings: PushConfig,
               say: Say, on_event: Callable[[Any], None]) -> str:
    """Push the image: the builder's own push (uncompressed weights, parallel, resumable, by the
    registry's profile) where the engine's layer store can be read, else the engine's push, with
    one line saying why. Returns the manifest digest."""
    store = None
    if settings.engine != "docker":
        try:
            store = EngineLayers.open(docker.client)
        except LayersUnavailable as exc:
            if settings.engine == "builder":
                raise RegistryError(f"push.engine is builder, but {exc}: run where the engine's data root is "
                                    "readable, or set push.engine to auto") from None
            say(f"pushing through the Docker engine (gzip, one layer at a time): {exc}")
    if store is not None:
        profile = settings.profile(client.ref.host)
        pusher = Pusher(client, store, PushSettings(parallel=settings.parallel, chunk_bytes=settings.chunk_mb * MIB,
                                                    gzip_level=settings.gzip_level, profile=profile,
                                                    max_layer_bytes=settings.max_layer_bytes(client.ref.host)), on_event)
        try:
            digest = pusher.push(name, tag, image_id)
        except LayersUnavailable as exc:  # a file the push may not read (a rootless engine's, say)
            if settings.engine == "builder":
                raise RegistryError(f"push.engine is builder, but {exc}: set push.engine to auto") from None
            say(f"pushing through the Docker engine (gzip, one layer at a time): {exc}")
        else:
            stats = pusher.stats
            say(f"pushed in {stats.seconds:.1f}s: {stats.blobs} blobs, {stats.sent_bytes / 1e9:.2f} GB sent "
                f"({stats.weight_bytes_sent / 1e9:.2f} GB of it weights, uncompressed), {stats.present} already there, "
                f"{stats.mounted} mounted from other repositories"
                + (f", {stats.resumed_bytes / 1e9:.2f} GB not sent again (resumed)" if stats.resumed_bytes else ""))
            return digest
    credentials = client.auth.credentials
    return docker.push(client.ref.repository(name), tag, on_event, credentials.engine_auth() if credentials else None)


def _same_image(client: RegistryClient, name: str, remote, image_id: str) -> bool:
    """Whether the registry's image is the local one. The classic image store's id is the config
    digest; the containerd store's is the manifest (or index) digest; a buildx push may wrap the
    image in an index with attestations: look inside it."""
    if image_id in (remote.digest, remote.config_digest):
        return True
    if remote.config_digest is not None:
        return False
    found = client.manifest(name, remote.digest)
    children = json.loads(found[0]).get("manifests", []) if found else []
    for child in children:
        image = client.image(name, child.get("digest", ""))
        if image is not None and image_id in (image.digest, image.config_digest):
            return True
    return False


def _with_run_commands(result: BuildResult, manifest: Manifest, docker: Docker, gpus: bool) -> BuildResult:
    host_network = not docker.has_bridge_network()  # dockerd --bridge=none: no -p
    result.run_commands = run_instructions(manifest, result.digest_reference or result.tag, host_network, gpus)
    return result


def run_smoke(docker: Docker, image_id: str, manifest: Manifest, gpus: bool) -> dict[str, Any]:
    smoke = manifest.smoke_test
    timeout = smoke.load_timeout_seconds + smoke.max_seconds + 60
    code, stdout, stderr = docker.run_to_completion(
        image_id, ["python3", "-m", "server.smoke"], timeout=timeout, gpus=gpus,
        environment={"BUILDER_DEVICE": "cuda" if gpus else "cpu"},
    )
    result: dict[str, Any] | None = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    if result is None:
        last = (stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise SmokeTestFailed(
            f"{manifest.name}: smoke test crashed (exit {code}) without a result: {last}; nothing was tagged or pushed"
        )
    if code != 0 and result.get("passed"):
        result = {**result, "passed": False, "reason": f"the smoke exited with code {code}"}
    return result


def smoke_summary(smoke: dict[str, Any]) -> str:
    parts = [f"device {smoke.get('device')}"]
    if smoke.get("load_seconds") is not None:
        parts.append(f"load {smoke['load_seconds']:.1f}s")
    if smoke.get("inference_seconds") is not None:
        parts.append(f"inference {smoke['inference_seconds']:.2f}s")
    if smoke.get("peak_rss_mb") is not None:
        parts.append(f"peak RSS {smoke['peak_rss_mb']:.0f} MB")
    if smoke.get("peak_gpu_mb") is not None:
        parts.append(f"peak GPU {smoke['peak_gpu_mb']:.0f} MB")
    return ", ".join(parts)


def run_instructions(manifest: Manifest, reference: str, host_network: bool, gpus: bool) -> list[str]:
    """The docker run and curl lines that produce an output from the built image."""
    port = DEFAULT_PORT
    network = "--network host" if host_network else f"-p {port}:{port}"
    gpu = " --gpus all" if gpus else ""
    lines = [f"docker run --rm{gpu} {network} -e PORT={port} {reference}"]
    if manifest.task == "text-to-image":
        body = {k: v for k, v in manifest.smoke_test.inputs.items() if k != "seed"}
        # --retry: the server answers 503 until the model has loaded; curl treats that as transient.
        lines.append(
            f"curl -sf --retry 120 --retry-delay 1 --retry-connrefused -X POST http://127.0.0.1:{port}/v1/predict "
            f"-H 'Content-Type: application/json' -H 'Accept: image/png' -d {shlex.quote(json.dumps(body))} "
            f"-o {manifest.name}.png"
        )
    return lines
