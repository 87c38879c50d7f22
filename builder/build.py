"""The build command's flow: fetch + code image -> weights layers -> compose -> smoke -> push -> tag.

The weights never enter the engine: the builder fetches and verifies them into its own cache on
the host (the Hub token stays in this process), makes their layers itself, and pushes them from
the cache while the engine builds the code image. The smoke runs on exactly those bytes at
exactly those paths. Nothing is tagged before the smoke passed; a version already in the registry
with other content is refused, the same content is a no-op.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder import __version__
from builder.assemble import CodeBlobs, Upload, code_blobs, engine_store, open_upload, push_image, weights_blobs
from builder.compose import CodeImage, compose_config, image_id_of, load_archive, read_code_image
from builder.config import BuilderConfig
from builder.docker import BuildRequest, Docker
from builder.errors import ConfigError, DockerError, InputError, ManifestError, RegistryError
from builder.fetch import Attempt, ContentCache, FetchConfig, FetchedFile, FetchEngine, PlannedFile
from builder.fetch.progress import human
from builder.ledger import Ledger
from builder.manifest import Manifest
from builder.project import Project
from builder.redact import SECRETS, remember
from builder.registry import RegistryClient, RegistryRef, smoke_tag
from builder.registry.auth import find_credentials
from builder.registry.layers import EngineLayers, LayersUnavailable
from builder.registry.blobs import Blob
from builder.render import DEFAULT_PORT, RenderOptions, layer_limit_problems, write_context
from builder.smoke import require_pass, run_smoke, smoke_summary
from builder.weights import SMALL, WeightsLayer, WeightsPlan, frames, smoke_mounts, weights_layers, weights_plan
from builder.weights.layers import file_layer
from builder.weights.tar import FORMAT_VERSION

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
    assemble_only: bool = False  # push by digest, untagged, no smoke (`builder smoke` tags it elsewhere)


@dataclass(frozen=True)
class Services:
    """What a build talks to besides the engine, passed in explicitly."""

    config: BuilderConfig
    ledger: Ledger

    def fetch_config(self, endpoint: str | None = None) -> FetchConfig:
        """The mirrors in the order to try: endpoint (default $HF_ENDPOINT) first, then as the
        ledger ranks them, with the configured tuning."""
        return self.config.fetch_config(endpoint or os.environ.get("HF_ENDPOINT"), self.ledger.mirror_ranking())

    def cache(self) -> ContentCache:
        return ContentCache(self.config.weights_cache_dir)


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
    code_image_id: str = ""
    smoke_via: str = ""  # mounts | image | none

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
    if options.assemble_only and not options.push:
        raise InputError("--assemble-only pushes the image by digest: it cannot go with --no-push")
    if options.push and not options.registry:
        raise InputError("no registry to push to: pass --registry HOST[:PORT][/NAMESPACE], set BUILDER_REGISTRY, or --no-push")
    return RegistryRef.parse(options.registry) if options.registry else None


@dataclass
class Build:
    """One build, passed through its stages (fetch, code image, layers, compose, smoke, push, record)."""

    manifest: Manifest
    origin: str
    project: Project
    options: BuildOptions
    services: Services
    docker: Docker
    say: Say
    on_build_line: Callable[[str], None]
    on_push_event: Callable[[Any], None]
    token: str | None
    registry: RegistryRef | None
    fetch_config: FetchConfig
    gpus: bool
    build_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    git_commit: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    fetched: dict[str, FetchedFile] = field(default_factory=dict)
    early: dict[str, Blob] = field(default_factory=dict)  # weights blobs sent while fetching, by diff id
    upload: Upload | None = None
    code: CodeImage | None = None
    weights: list[WeightsLayer] = field(default_factory=list)
    config: bytes = b""
    image_id: str = ""
    layers: list[dict[str, Any]] | None = None
    elsewhere: dict[str, tuple[str, int]] = field(default_factory=dict)  # streamed: sha256 -> layer digest, size
    stream_error: BaseException | None = None
    cancelled: bool = False  # the code image's build was stopped: its log is no longer echoed
    loaded: str = ""  # the id the engine gave the image, when it was loaded into it
    lock: threading.Lock = field(default_factory=threading.Lock)
    ledger_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def plan(self) -> WeightsPlan:
        return weights_plan(self.manifest)

    @property
    def ledger(self) -> Ledger:
        return self.services.ledger

    @property
    def pushing(self) -> bool:
        return self.registry is not None and self.options.push

    @property
    def repository(self) -> str:
        return self.registry.repository(self.manifest.name) if self.registry else self.manifest.name


def run_build(
    manifest: Manifest,
    origin: str,
    project: Project,
    options: BuildOptions,
    services: Services,
    connect: Callable[[], Docker],
    say: Say,
    on_build_line: Callable[[str], None],
    on_push_event: Callable[[Any], None] = lambda event: None,
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
    build = Build(manifest, origin, project, options, services, docker, say, on_build_line, on_push_event, token,
                  registry, fetch_config, gpus, git_commit=project.git_revision())
    build.ledger.start_build(build.build_id, manifest.name, manifest.version, manifest.digest, __version__,
                             build.git_commit)
    build.ledger.record_weights(build.build_id, manifest.weights_bytes)  # the dashboard's weights size per version
    try:
        result = _stages(build)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        build.ledger.finish_build(build.build_id, status, image_id=build.image_id or None,
                                  error=str(exc) or type(exc).__name__, seconds=build.seconds)
        raise
    # An assembled image is pushed, by digest, untagged: its row says `pushed` with no smoke row
    # beside it, until `builder smoke` adds the smoke and the tag.
    status = "pushed" if result.pushed or result.already_in_registry or options.assemble_only else "built"
    build.ledger.finish_build(build.build_id, status, image_id=result.image_id, repository=build.repository,
                              digest=result.digest_reference.split("@", 1)[1] if result.digest_reference else None,
                              layers=build.layers, seconds=result.seconds)
    return _with_run_commands(result, manifest, docker, gpus)


# -- the stages -----------------------------------------------------------------------------------
def _stages(build: Build) -> BuildResult:
    manifest, say = build.manifest, build.say
    existing = _existing(build)
    if build.pushing and existing is None:
        build.upload = open_upload(build.registry, manifest.name, build.services.config.push,  # type: ignore[arg-type]
                                   build.on_push_event)
        build.upload.pusher.begin(manifest.name)
    say(f"build {manifest.name}:{manifest.version}: weights into {build.services.config.weights_cache_dir} "
        f"(mirrors {', '.join(m.name for m in build.fetch_config.mirrors)}) while the code image is built")
    say(f"build tool: {build.docker.build_tool.describe()}")
    started = time.perf_counter()
    code_id = _fetch_and_build_code(build)
    # "build": fetch and code image side by side, until the image can be composed (the phase the
    # metrics and the dashboard name); "fetch" and "code_image" say which of the two took it.
    build.seconds["build"] = round(time.perf_counter() - started, 2)
    downloaded = sum(a.bytes for a in build.attempts if a.outcome in ("ok", "retry", "failed"))
    build.weights = weights_layers(build.services.cache(), build.plan, build.fetched, build.elsewhere)
    build.code = read_code_image(build.docker, code_id)
    build.config = compose_config(build.code, build.weights)
    build.image_id = image_id_of(build.config)
    build.layers = [{"diff_id": d} for d in json.loads(build.config)["rootfs"]["diff_ids"]]
    say(f"image {build.image_id[:19]}: code image {code_id[:19]} with {len(build.weights)} weights layer(s) "
        f"({human(sum(w.size for w in build.weights))}) after its layer {build.code.split}; "
        f"{human(downloaded)} downloaded")
    result = BuildResult(manifest.name, manifest.version, build.image_id, {}, f"{build.repository}:{manifest.version}",
                         seconds=build.seconds, downloaded_bytes=downloaded, build_id=build.build_id,
                         code_image_id=code_id)
    if existing is not None:
        return _already_there(build, result, existing)
    if build.options.assemble_only:
        return _assemble_only(build, result)
    if build.pushing and not build.docker.is_local():
        return _push_then_smoke(build, result)  # an engine elsewhere pulls what it lacks from the registry
    smoke = _smoke(build)
    if smoke is None:
        return _push_then_smoke(build, result)  # the engine cannot see this host's files
    result.smoke, result.smoke_via = smoke
    if not build.pushing:
        build.docker.tag(build.loaded or build.image_id, manifest.name, manifest.version)
        result.tag = f"{manifest.name}:{manifest.version}"
        return result
    return _push_and_tag(build, result)


def _existing(build: Build):
    """What the registry holds under this version already (None: nothing), asked before any work."""
    if not build.pushing:
        return None
    return RegistryClient(build.registry).image(build.manifest.name, build.manifest.version)  # type: ignore[arg-type]


def _fetch_and_build_code(build: Build) -> str:
    """The weights into the cache (in this thread) while the engine builds the code image (in
    another); each large file's layer starts up to the registry as soon as the file is verified."""
    outcome: dict[str, Any] = {}
    procs: list[Any] = []

    def code() -> None:
        started = time.perf_counter()
        try:
            outcome["code"] = _build_code(build, procs)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc
        build.seconds["code_image"] = round(time.perf_counter() - started, 2)

    worker = threading.Thread(target=code, name="code-image", daemon=True)
    worker.start()
    started = time.perf_counter()
    try:
        _fetch(build)
    except BaseException:
        build.cancelled = True  # the weights failed: the code image is not wanted any more
        for proc in procs:
            proc.terminate()
        worker.join(timeout=30)  # its last lines before the one that says what failed
        raise
    finally:
        build.seconds["fetch"] = round(time.perf_counter() - started, 2)
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["code"]


def _fetch(build: Build) -> None:
    plan, cache = build.plan, build.services.cache()
    store = next((m.url for m in build.fetch_config.mirrors if m.url.startswith("oci://")), None)
    credentials = None
    if store is not None:
        from builder.registry.weights import WeightsStore

        found = find_credentials(WeightsStore.parse(store).ref.host)
        credentials = (found.username, found.password) if found else None
    if build.options.ca_bundle is not None:
        from builder.fetch.tls import trust_additional_cas

        trust_additional_cas(build.options.ca_bundle)

    def on_attempt(attempt: Attempt) -> None:
        with build.ledger_lock:  # from every download thread; one ledger connection
            build.attempts.append(attempt)
            build.ledger.record_attempts([attempt], build.build_id)  # as it happens: a killed build keeps them

    engine = FetchEngine(build.fetch_config, build.token, cache, plan.model, log=lambda line: build.say(SECRETS(line)),
                         on_attempt=on_attempt, frames=frames(plan), store_credentials=credentials)
    to_cache = list(plan.files)
    streams = None
    if build.options.assemble_only and build.upload is not None:
        to_cache, streamed = _streamed_or_cached(build, cache)
        streams = threading.Thread(target=_stream_all, args=(build, engine, streamed), name="streams", daemon=True)
        streams.start()
    engine.check_space(engine.missing_bytes(to_cache))
    try:
        build.fetched.update(engine.fetch(to_cache, on_fetched=lambda item, got: _send_early(build, cache, item, got)))
    finally:
        if streams is not None:
            streams.join()
    if build.stream_error is not None:
        raise build.stream_error


def _streamed_or_cached(build: Build, cache: ContentCache) -> tuple[list[PlannedFile], list[PlannedFile]]:
    """For --assemble-only: the large files that are neither in the cache nor (by their recorded
    layer digest) in the registry go from the mirror to the registry without touching the disk;
    those the registry holds need nothing; the rest go through the cache as usual."""
    to_cache, streamed = [], []
    upload = build.upload
    assert upload is not None
    for item in build.plan.files:
        if item.layer == SMALL or item.sha256 is None or cache.has(item.sha256):
            to_cache.append(item)
            continue
        known = cache.layer(item.sha256, FORMAT_VERSION)
        if known is not None and upload.client.blob_size(upload.client.ref.path(upload.name), known[0]) is not None:
            build.elsewhere[item.sha256] = known
            build.fetched[item.key] = FetchedFile(item.dest, item.sha256, item.size or 0, 0.0, True, "registry")
            build.say(f"{item.dest}: its layer {known[0][:19]} is in the registry already: not fetched")
        elif not any(s.sha256 == item.sha256 for s in streamed):
            streamed.append(item)
    return to_cache, streamed


def _stream_all(build: Build, engine: FetchEngine, items: list[PlannedFile]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from builder.assemble import blob_stream
    from builder.fetch.stream import stream_file
    from builder.weights.tar import file_layer_frame

    def one(item: PlannedFile) -> None:
        frame = file_layer_frame(str(build.plan.blob_path(item.sha256)).lstrip("/"), item.size)  # type: ignore[arg-type]
        done = stream_file(engine, item, frame, blob_stream(build.upload))  # type: ignore[arg-type]
        build.services.cache().record_layer(done.sha256, FORMAT_VERSION, done.layer_digest, done.layer_size)
        with build.lock:
            build.elsewhere[done.sha256] = (done.layer_digest, done.layer_size)
            for other in build.plan.files:
                if other.sha256 == done.sha256:
                    build.fetched[other.key] = FetchedFile(other.dest, done.sha256, done.size, 0.0, True, "stream")

    stop = threading.Event()
    threading.Thread(target=engine.progress.report_every, args=(build.fetch_config.progress_seconds, engine.log, stop),
                     daemon=True).start()
    try:
        with ThreadPoolExecutor(max_workers=build.fetch_config.concurrency, thread_name_prefix="stream") as pool:
            for future in [pool.submit(one, item) for item in items]:
                future.result()
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        build.stream_error = exc
    finally:
        stop.set()


def _send_early(build: Build, cache: ContentCache, item: PlannedFile, got: FetchedFile) -> None:
    if build.upload is None or item.layer == SMALL:
        return
    layer = file_layer(cache, build.plan, got.sha256)
    with build.lock:
        if layer.diff_id in build.early:
            return
        blob = build.upload.pusher.weights_blob(layer)
        build.early[layer.diff_id] = blob
    build.upload.pusher.send_early(blob)


def _build_code(build: Build, procs: list[Any]) -> str:
    options, manifest = build.options, build.manifest
    render_options = RenderOptions(base_image=options.base_image, ca_bundle=options.ca_bundle is not None,
                                   source_revision=build.git_commit)
    secrets: dict[str, Path] = {}
    if options.ca_bundle is not None:
        secrets["ca_bundle"] = options.ca_bundle.resolve()
    if options.pip_conf is not None:
        secrets["pip_conf"] = options.pip_conf.resolve()
    with tempfile.TemporaryDirectory(prefix="builder-ctx-") as ctx_dir:
        context = write_context(manifest, build.origin, render_options, build.project, Path(ctx_dir) / "context")
        return build.docker.build(
            BuildRequest(context, secrets, {"BUILDER_REBUILD": build.build_id} if options.no_cache else {},
                         options.network),
            on_line=lambda line: None if build.cancelled else build.on_build_line(line), on_start=procs.append,
        )


def _smoke(build: Build) -> tuple[dict[str, Any], str] | None:
    """Run the smoke on the image's bytes: through bind mounts where the image goes to a registry,
    else (--no-push) on the image itself, loaded into the engine. None when the mounts are
    impossible: the engine cannot see this host's files (one in a chroot, a VM, another
    container, on the same socket); the random scratch path it could not find proves it."""
    manifest, docker = build.manifest, build.docker
    started = time.perf_counter()
    if build.pushing:
        try:
            smoke, via = _smoke_with_mounts(build), "mounts"
        except DockerError as exc:
            if "bind source path does not exist" not in str(exc) and "invalid mount config" not in str(exc):
                raise
            build.say("the engine cannot see this host's files: the image goes to the registry first, by "
                      "digest, and the engine pulls it for the smoke")
            return None
    else:
        via = "image"
        build.say("the image into the engine (one write of the weights), then the smoke test in it "
                  f"({'GPU' if build.gpus else 'CPU'}, no network)")
        build.loaded = _load(build)
        smoke = run_smoke(docker, build.loaded, manifest, build.gpus)
    _passed(build, smoke, time.perf_counter() - started)
    return smoke, via


def _passed(build: Build, smoke: dict[str, Any], seconds: float) -> None:
    build.seconds["smoke"] = round(seconds, 2)
    build.ledger.record_smoke(build.build_id, build.image_id, smoke)
    require_pass(build.manifest, smoke)
    build.say(f"smoke passed in {build.seconds['smoke']:.1f}s: {smoke_summary(smoke)}")


def _push_then_smoke(build: Build, result: BuildResult) -> BuildResult:
    """For an engine that cannot see this host's files: the image goes to the registry by digest,
    untagged; the engine pulls it and runs the smoke; only then the version's tag."""
    manifest = build.manifest
    build.say(f"push {build.repository} by digest, untagged, for the engine to pull")
    started = time.perf_counter()
    digest = _push(build, None)
    build.seconds["push"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    pulled = build.docker.pull(f"{build.repository}@{digest}")
    build.say(f"smoke test in the pulled image ({'GPU' if build.gpus else 'CPU'}, no network)")
    smoke = run_smoke(build.docker, pulled, manifest, build.gpus)
    _passed(build, smoke, time.perf_counter() - started)
    result.smoke, result.smoke_via = smoke, "pulled"
    build.upload.client.tag(manifest.name, digest, manifest.version)  # type: ignore[union-attr]
    return _record_push(build, result, digest, "pushed")


def _smoke_with_mounts(build: Build) -> dict[str, Any]:
    build.say(f"smoke test on the code image with the weights mounted read-only from the cache "
              f"({'GPU' if build.gpus else 'CPU'}, no network)")
    cache = build.services.cache()
    scratch = Path(tempfile.mkdtemp(prefix="smoke-", dir=cache.root))
    try:
        mounts = smoke_mounts(cache, build.plan, build.fetched, scratch)
        return run_smoke(build.docker, build.code.image_id, build.manifest, build.gpus,  # type: ignore[union-attr]
                         [(str(m.source), m.target) for m in mounts])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _load(build: Build) -> str:
    """Load the composed image into the engine; the id it answers to. The code layers above the
    weights come from the engine's store where it can be read, else from `docker save`; an engine
    that wants every layer in the archive (the containerd image store) gets the ones below too."""
    code = build.code
    assert code is not None
    above = _code_layers(build.docker, code, set(code.diff_ids[code.split:]))
    try:
        return build.docker.load(load_archive(build.config, code, build.weights, above)) or build.image_id
    except DockerError as exc:
        if "not found" not in str(exc) and "failed to resolve" not in str(exc):
            raise
    build.say("this engine wants every layer in the archive: the code image's too")
    every = _code_layers(build.docker, code, set(code.diff_ids))
    return build.docker.load(load_archive(build.config, code, build.weights, every)) or build.image_id


def _code_layers(docker: Docker, code: CodeImage, wanted: set[str]) -> dict[str, tuple[Any, int]]:
    try:
        store = EngineLayers.open(docker.client)
        layers = [layer for layer in store.layers(store.config(code.image_id)) if layer.diff_id in wanted]
        return {layer.diff_id: (layer.read, layer.size) for layer in layers}
    except LayersUnavailable:
        pass
    saved = docker.saved_layers(code.image_id, wanted)
    return {d: ((lambda path=path: _read_file(path)), path.stat().st_size) for d, path in saved.items()}


def _read_file(path: Path):
    with path.open("rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            yield chunk


def _push_parts(build: Build) -> tuple[Upload, CodeBlobs, list[Blob]]:
    upload = build.upload
    assert upload is not None and build.code is not None
    store = engine_store(build.docker, build.services.config.push, build.say)
    profile = upload.client.profile
    build.say(f"push path: weights layers from the cache (uncompressed, {profile.name} profile), code layers "
              + ("replayed from the engine's layer store and gzipped here" if store is not None
                 else "by the Docker engine's own push"))
    code_part = code_blobs(build.docker, upload, build.code, store, build.on_push_event)
    return upload, code_part, weights_blobs(upload, build.weights, build.early)


def _push(build: Build, reference: str | None) -> str:
    """Every blob and the manifest. A code layer the builder may not read after all (a rootless
    engine's file, say) hands the code layers to the engine's push, with one line."""
    upload, code_part, weights = _push_parts(build)
    try:
        return push_image(upload, reference, build.config, build.code, code_part, weights, build.say)  # type: ignore[arg-type]
    except LayersUnavailable as exc:
        if build.services.config.push.engine == "builder":
            raise RegistryError(f"push.engine is builder, but {exc}: set push.engine to auto") from None
        build.say(f"code layers go up through the Docker engine's own push: {exc}")
    code_part = code_blobs(build.docker, upload, build.code, None, build.on_push_event)  # type: ignore[arg-type]
    return push_image(upload, reference, build.config, build.code, code_part, weights, build.say)  # type: ignore[arg-type]


def _push_and_tag(build: Build, result: BuildResult) -> BuildResult:
    manifest = build.manifest
    build.say(f"push {result.tag}")
    started = time.perf_counter()
    digest = _push(build, manifest.version)
    build.seconds["push"] = round(time.perf_counter() - started, 2)
    return _record_push(build, result, digest, "pushed")


def _assemble_only(build: Build, result: BuildResult) -> BuildResult:
    build.say(f"push {build.repository} by digest, untagged: `python -m builder smoke` on a GPU host tags it")
    started = time.perf_counter()
    digest = _push(build, None)
    build.seconds["push"] = round(time.perf_counter() - started, 2)
    build.ledger.record_push(build.build_id, build.repository, "", digest, "pushed")  # "": no tag yet
    result.digest_reference = f"{build.repository}@{digest}"
    result.smoke_via = "none"
    build.layers = _pushed_layers(build.upload.client, build.manifest.name, digest)  # type: ignore[union-attr]
    return result


def _record_push(build: Build, result: BuildResult, digest: str, outcome: str) -> BuildResult:
    manifest = build.manifest
    client = build.upload.client if build.upload else RegistryClient(build.registry)  # type: ignore[arg-type]
    pushed = client.image(manifest.name, digest)
    if pushed is None or pushed.config_digest != build.image_id:
        raise RegistryError(f"the registry does not hold {build.repository}@{digest} after the push: check its logs")
    client.record_smoke(manifest.name, digest, {**_attestation(build, result.smoke), "digest": digest})
    build.ledger.record_push(build.build_id, build.repository, manifest.version, digest, outcome)
    build.layers = _pushed_layers(client, manifest.name, digest)
    result.digest_reference = f"{build.repository}@{digest}"
    result.pushed = True
    publish_weights(build, client, digest)
    return result


def _pushed_layers(client: RegistryClient, name: str, digest: str) -> list[dict[str, Any]]:
    layers = json.loads(client.manifest(name, digest)[0]).get("layers", [])  # type: ignore[index]
    return [{"digest": layer["digest"], "size": layer["size"]} for layer in layers]


def _attestation(build: Build, smoke: dict[str, Any]) -> dict[str, Any]:
    return {"passed": True, "smoke": smoke, "image_id": build.image_id, "version": build.manifest.version,
            "manifest_digest": build.manifest.digest, "build_id": build.build_id, "builder_version": __version__,
            "git_commit": build.git_commit}


def _already_there(build: Build, result: BuildResult, existing) -> BuildResult:
    manifest = build.manifest
    client = RegistryClient(build.registry)  # type: ignore[arg-type]
    if existing.config_digest != build.image_id:
        raise RegistryError(
            f"{result.tag} already exists with other content ({existing.digest}); versions are immutable: "
            f"bump version in {build.origin} (python -m builder bump {manifest.name}) and build again"
        )
    build.say(f"{result.tag} already holds this image: nothing to push")
    record = client.get_document(manifest.name, smoke_tag(existing.digest))
    result.smoke = (record or {}).get("smoke") or {}
    if record is None:  # pushed, but its smoke record is gone: smoke it again before writing one
        result.smoke, result.smoke_via = _smoke(build)
        client.record_smoke(manifest.name, existing.digest, {**_attestation(build, result.smoke),
                                                             "digest": existing.digest})
    build.ledger.record_push(build.build_id, build.repository, manifest.version, existing.digest, "already_present")
    result.digest_reference = f"{build.repository}@{existing.digest}"
    result.already_in_registry = True
    publish_weights(build, client, existing.digest)
    return result


def publish_weights(build: Build, client: RegistryClient, digest: str) -> None:
    """Put each verified weights file in the registry weights store an `oci://` mirror names, for
    every later build on any host. The image is pushed and good either way: a failure here is a
    line, not a failed build."""
    store_url = next((m.url for m in build.fetch_config.mirrors if m.url.startswith("oci://")), None)
    if store_url is None:
        return
    from builder.errors import BuilderError
    from builder.registry.weights import WeightsStore, publish

    try:
        store = WeightsStore.parse(store_url)
        done = publish(store, client, build.manifest, build.plan, build.fetched, build.weights,
                       build.services.cache())
    except BuilderError as exc:
        build.say(f"weights store {store_url}: not published ({exc}); builds elsewhere fetch these files from the Hub")
        return
    build.say(f"weights store {store_url}: {done.new} file(s) published ({done.uploaded_bytes} bytes uploaded, the "
              f"large files' layers mounted), {done.present} already there"
              + (f"; not published: {', '.join(done.skipped[:3])}" if done.skipped else ""))


def _with_run_commands(result: BuildResult, manifest: Manifest, docker: Docker, gpus: bool) -> BuildResult:
    host_network = not docker.has_bridge_network()  # dockerd --bridge=none: no -p
    result.run_commands = run_instructions(manifest, result.digest_reference or result.tag, host_network, gpus)
    return result


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
