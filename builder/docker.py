"""The Docker engine: BuildKit builds of the code image, the smoke container, loads, tags and pushes.

Builds go through the docker CLI, because the Docker SDK's build call uses the legacy builder,
which has no secret mounts (https://github.com/docker/docker-py/issues/2230). Which CLI can run
a BuildKit build is detected, not assumed: `docker buildx build --load` where the buildx plugin
exists, else a pre-23 client with DOCKER_BUILDKIT=1 (Docker 23 moved BuildKit builds into
buildx, so newer clients without the plugin refuse). Everything else (run, tag, push, inspect)
goes through the SDK, and the CLI is pointed at the very engine the SDK client talks to.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import reach
from builder.errors import BuilderError, DockerError, InputError, RegistryError, from_marker
from builder.redact import SECRETS

LineSink = Callable[[str], None]
_STEP_ERROR = re.compile(r"(?:ERROR: |error: |did not complete successfully|failed to solve)", re.IGNORECASE)


@dataclass(frozen=True)
class BuildTool:
    """How to start a BuildKit build on this host."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def buildx(self) -> bool:
        return "buildx" in self.argv[1:]

    def describe(self) -> str:
        prefix = " ".join(f"{k}={v}" for k, v in self.env.items())
        return f"{prefix} {' '.join(self.argv)}".strip()


# buildx 0.10 and later attach a provenance attestation by default, which turns every image into an
# index holding a manifest with the build's own timestamps and invocation id (docker/buildx 0.10
# release notes; https://docs.docker.com/build/metadata/attestations/slsa-provenance/). On the
# containerd image store that index is what the engine keeps, so the same build would get a new
# image id every time and a no-op rebuild would not be one; the classic store drops it anyway.
# The variable, unlike --provenance=false, is also accepted by a buildx too old to know it.
_BUILDX_ENV = {"BUILDX_NO_DEFAULT_ATTESTATIONS": "1"}


def _probe_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a CLI probe runs in: that of the detection, so that its DOCKER_CONFIG
    (where a user's cli-plugins/docker-buildx lives) counts."""
    return {**os.environ, **environ}


def _client_major(cli: str, environ: Mapping[str, str] = os.environ) -> int | None:
    try:
        out = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=20,
                             env=_probe_env(environ)).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"version (\d+)\.", out)
    return int(match.group(1)) if match else None


def _has_buildx(cli: str, environ: Mapping[str, str] = os.environ) -> bool:
    try:
        return subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=20,
                              env=_probe_env(environ)).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def detect_build_tool(environ: Mapping[str, str] = os.environ, fallbacks: Iterable[str] = ("/usr/bin/docker",)) -> BuildTool:
    """The first docker CLI that can run BuildKit builds ($BUILDER_DOCKER_CLI, PATH, /usr/bin).
    A DOCKER_CONFIG in `environ` is where the plugin was found, so the build keeps it."""
    candidates: list[str] = []
    for name in (environ.get("BUILDER_DOCKER_CLI"), shutil.which("docker", path=environ.get("PATH")), *fallbacks):
        if name and os.path.exists(name) and os.path.realpath(name) not in map(os.path.realpath, candidates):
            candidates.append(name)
    if not candidates:
        raise DockerError("no docker CLI found: install Docker (the engine and its CLI) and build again")
    config = {"DOCKER_CONFIG": environ["DOCKER_CONFIG"]} if environ.get("DOCKER_CONFIG") else {}
    for cli in candidates:
        if _has_buildx(cli, environ):
            return BuildTool((cli, "buildx", "build", "--load"), {**config, **_BUILDX_ENV})
    for cli in candidates:
        major = _client_major(cli, environ)
        if major is not None and major < 23:
            return BuildTool((cli, "build"), {**config, "DOCKER_BUILDKIT": "1"})
    raise DockerError(
        f"none of {', '.join(candidates)} can run a BuildKit build: install the docker buildx plugin "
        "(`docker buildx version` must work) or point BUILDER_DOCKER_CLI at a client that can"
    )


@dataclass(frozen=True)
class BuildRequest:
    context: Path
    secrets: Mapping[str, Path] = field(default_factory=dict)  # id -> file; files stay outside the context
    build_args: Mapping[str, str] = field(default_factory=dict)
    network: str = "auto"  # auto: network_for() picks by the engine's networks
    discard: bool = False  # run the steps for their output only: export nothing, make no image


def network_for(requested: str, has_bridge: bool) -> str:
    """The network for build steps. auto: the engine's default network where it has a bridge
    network; host where it has none (dockerd --bridge=none), since there a step on the default
    network reaches nothing, not even the Hub. Anything else is taken as asked."""
    if requested != "auto":
        return requested
    return "default" if has_bridge else "host"


def _read_metadata(path: Path) -> dict[str, Any]:
    """buildx's --metadata-file (containerimage.digest, containerimage.config.digest); {} when absent."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _failure_summary(lines: list[str]) -> str:
    """The most telling line of a failed BuildKit log, with a hint where we know one."""
    interesting = [line for line in lines if _STEP_ERROR.search(line)]
    pick = interesting[0] if interesting else (lines[-1] if lines else "no output")
    pick = re.sub(r"^#\d+\s+(?:\d+\.\d+\s+)?", "", pick).strip()[:400]
    if any("CERTIFICATE_VERIFY_FAILED" in line for line in lines):
        pick += " (TLS verification failed inside the build: behind a TLS-intercepting proxy, pass --ca-bundle)"
    return pick


def engine_host(client: Any) -> str | None:
    """The DOCKER_HOST that names the engine an SDK client talks to over a unix socket (what the
    SDK keeps is only `http+docker://localhost`, the socket's path is on its transport adapter);
    None for any other transport, where the environment already names the engine."""
    api = getattr(client, "api", client)
    base = getattr(api, "base_url", "")
    if not isinstance(base, str) or not base.startswith("http+docker://"):
        return None
    path = getattr(api.get_adapter(base), "socket_path", None)
    return f"unix://{path}" if isinstance(path, str) and path else None


class Docker:
    """One connection to a Docker engine; pass it in, never a global.

    `docker_host`: the engine as the CLI should name it (DOCKER_HOST); by default the one the SDK
    client talks to, so a build never lands on another engine than the one that runs, tags and
    pushes its image (the CLI would otherwise follow its own context or the environment)."""

    def __init__(self, client: Any, build_tool: BuildTool | None = None, docker_host: str | None = None) -> None:
        self.client = client
        self._build_tool = build_tool
        self.docker_host = docker_host or engine_host(client)
        self._configs: dict[str, str] = {}  # image id -> config digest, for images built here

    @classmethod
    def connect(cls) -> "Docker":
        import docker
        from docker.errors import DockerException

        try:
            client = docker.from_env(timeout=300)
            client.ping()
        except DockerException as exc:
            where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
            reason = reach.connection_failure(exc) or " ".join(str(exc).split())[:160]
            raise reach.unreachable("the Docker engine", where, reason, reach.DOCKER) from None
        return cls(client)

    @property
    def build_tool(self) -> BuildTool:
        if self._build_tool is None:
            self._build_tool = detect_build_tool()
        return self._build_tool

    # -- build -------------------------------------------------------------------------------
    def build(self, request: BuildRequest, on_line: LineSink, scrub: Iterable[str] = (),
              on_start: Callable[[subprocess.Popen], None] = lambda proc: None) -> str:
        """Run the build; return the image id ("" when discarded). Nothing is tagged: a tag comes
        only after the smoke. `on_start` gets the build's process, for a caller that may stop it."""
        tool = self.build_tool
        secrets_to_hide = [s for s in scrub if s]
        with tempfile.TemporaryDirectory(prefix="builder-iid-") as tmp:
            iidfile = Path(tmp, "iid")
            # The engine is asked only when the choice is the engine's to make.
            network = request.network if request.network != "auto" else network_for("auto", self.has_bridge_network())
            argv = [*tool.argv, "--progress=plain", "--network", network]
            if request.discard:
                argv = [a for a in argv if a != "--load"] + ["--output", "type=tar,dest=/dev/null"]
            else:
                argv += ["--iidfile", str(iidfile)]
                if tool.buildx:
                    argv += ["--metadata-file", str(Path(tmp, "metadata.json"))]
            for secret_id, path in sorted(request.secrets.items()):
                argv += ["--secret", f"id={secret_id},src={path}"]
            for key, value in sorted(request.build_args.items()):
                argv += ["--build-arg", f"{key}={value}"]
            argv.append(str(request.context))
            env = {**os.environ, **tool.env, **({"DOCKER_HOST": self.docker_host} if self.docker_host else {})}
            tail: list[str] = []
            carried: BuilderError | None = None
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                        text=True, errors="replace", bufsize=1)
            except OSError as exc:
                raise DockerError(f"cannot start {tool.describe()}: {exc}") from None
            on_start(proc)
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                for secret in secrets_to_hide:
                    line = line.replace(secret, "***")
                line = SECRETS(line)  # and every other secret this process knows, or that looks like one
                carried = carried or from_marker(line)
                tail = (tail + [line])[-60:]
                on_line(line)
            code = proc.wait()
            if code != 0:
                if carried is not None:
                    raise carried
                raise DockerError(f"image build failed: {_failure_summary(tail)} (the build log above has the rest)")
            if request.discard:
                return ""
            image_id = iidfile.read_text().strip() if iidfile.exists() else ""
            metadata = _read_metadata(Path(tmp, "metadata.json"))
        if not image_id.startswith("sha256:"):
            raise DockerError(f"the build finished but reported no image id (got {image_id!r})")
        return self._engine_id(image_id, metadata)

    def _engine_id(self, reported: str, metadata: Mapping[str, Any]) -> str:
        """The id the engine knows the new image by. The iidfile holds the config digest, which is
        the image id on the classic store; the containerd image store keeps images by their
        manifest digest and answers "No such image" for the config's (checked on Docker 26), so
        there the manifest digest buildx wrote to its metadata file is the id."""
        from docker.errors import DockerException, ImageNotFound

        config = str(metadata.get("containerimage.config.digest") or reported)
        for candidate in dict.fromkeys([reported, str(metadata.get("containerimage.digest") or "")]):
            if not candidate.startswith("sha256:"):
                continue
            try:
                image_id = str(self.client.images.get(candidate).id)
            except ImageNotFound:
                continue
            except DockerException as exc:
                raise DockerError(f"the build finished but the engine cannot show {candidate[:19]}: "
                                  f"{' '.join(str(exc).split())[:200]}") from None
            self._configs[image_id] = config
            return image_id
        raise DockerError(f"the build finished but the engine knows no image {reported[:19]}: "
                          "was DOCKER_HOST or the docker context changed during the build?")

    def config_digest(self, image_id: str) -> str:
        """The digest of the image's config (what a registry's manifest names), which is its id on
        the classic store but not on the containerd image store. Known for images built here."""
        return self._configs.get(image_id, image_id)

    # -- inspect, run ------------------------------------------------------------------------
    def has_bridge_network(self) -> bool:
        """Whether the engine has its default bridge network (dockerd --bridge=none has none).
        The name filter matches substrings: compare the names."""
        return any(n.name == "bridge" for n in self.client.networks.list(names=["bridge"]))

    def has_gpu_runtime(self) -> bool:
        info = self.client.info()
        return "nvidia" in (info.get("Runtimes") or {})

    def image_labels(self, ref: str) -> dict[str, str]:
        return dict(self.client.images.get(ref).labels or {})

    def diff_ids(self, ref: str) -> list[str]:
        return list(self.client.images.get(ref).attrs.get("RootFS", {}).get("Layers", []))

    def is_local(self) -> bool:
        """Whether the engine runs on this machine (its unix socket), so it can bind-mount our files."""
        return getattr(self.client.api, "base_url", "") == "http+docker://localhost"

    def inspect(self, ref: str) -> dict[str, Any]:
        from docker.errors import DockerException

        try:
            return dict(self.client.api.inspect_image(ref))
        except DockerException as exc:
            raise DockerError(f"cannot inspect {ref[:40]}: {' '.join(str(exc).split())[:300]}") from None

    def history(self, ref: str) -> list[dict[str, Any]]:
        """The image's history, oldest first, as the engine's API gives it (one entry per step)."""
        from docker.errors import DockerException

        try:
            return list(reversed(self.client.api.history(ref)))
        except DockerException as exc:
            raise DockerError(f"cannot read the history of {ref[:40]}: {' '.join(str(exc).split())[:300]}") from None

    def load(self, archive: Iterable[bytes]) -> str | None:
        """Load an image archive (docker-archive format) streamed from `archive`; the id the engine
        gives it (its config digest on the classic store, a manifest digest on the containerd
        image store), or None when it does not say."""
        from docker.errors import DockerException

        loaded = None
        try:
            for event in self.client.api.load_image((chunk for chunk in archive), quiet=True):
                if isinstance(event, dict) and event.get("error"):
                    raise DockerError(f"the engine refused the image: {event['error']}")
                said = event.get("stream", "") if isinstance(event, dict) else ""
                if "Loaded image ID: " in said:
                    loaded = said.split("Loaded image ID: ", 1)[1].strip()
        except DockerException as exc:
            raise DockerError(f"cannot load the image into the engine: {' '.join(str(exc).split())[:300]}") from None
        return loaded

    def run_to_completion(self, image: str, command: list[str], *, timeout: float, gpus: bool,
                          environment: Mapping[str, str] | None = None,
                          mounts: Iterable[tuple[str, str]] = ()) -> tuple[int, str, str]:
        """Run a container with no network; (exit code, stdout, stderr). Removed afterwards.
        `mounts`: (host path, container path) pairs, bind-mounted read-only."""
        from docker.errors import DockerException
        from docker.types import DeviceRequest, Mount
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import ReadTimeout

        requests_ = [DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None
        try:
            container = self.client.containers.run(
                image, command, detach=True, network_mode="none", device_requests=requests_,
                environment=dict(environment or {}),
                mounts=[Mount(target, source, type="bind", read_only=True) for source, target in mounts],
            )
        except DockerException as exc:
            raise DockerError(f"cannot start a container from {image[:19]}: {' '.join(str(exc).split())[:300]}") from None
        try:
            try:
                status = container.wait(timeout=timeout)
            except (ReadTimeout, RequestsConnectionError):
                return 124, "", f"did not finish within {timeout:.0f}s"
            stdout = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
            stderr = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
            return int(status.get("StatusCode", 1)), stdout, stderr
        finally:
            try:
                container.remove(force=True)
            except DockerException:
                pass

    # -- tag, push ---------------------------------------------------------------------------
    def tag(self, image_id: str, repository: str, tag: str) -> None:
        from docker.errors import DockerException

        try:
            self.client.api.tag(image_id, repository, tag, force=True)
        except DockerException as exc:
            raise DockerError(f"cannot tag {image_id[:19]} as {repository}:{tag}: {exc}") from None

    def saved_layers(self, image_id: str, wanted: set[str]) -> dict[str, Path]:
        """The layer tars of `image_id` whose diff ids are `wanted`, taken from `docker save` (any
        engine, any user) into temporary files: for the few small layers the engine's store cannot
        give where it cannot be read. The classic store exports each layer as a tar; the containerd
        store, the blobs it holds (gzip here): those are unpacked on the way."""
        import gzip
        import hashlib
        import tarfile

        from docker.errors import DockerException

        out = Path(tempfile.mkdtemp(prefix="builder-saved-"))
        found: dict[str, Path] = {}
        try:
            stream = self.client.api.get_image(image_id)
            with tarfile.open(fileobj=_ChunkReader(stream), mode="r|") as archive:
                for member in archive:
                    if not member.isfile() or not (member.name.endswith("layer.tar") or "/sha256/" in member.name):
                        continue
                    source = archive.extractfile(member)
                    target = out / f"{len(found)}-{os.getpid()}.tar"
                    digest = hashlib.sha256()
                    head = source.read(2)  # type: ignore[union-attr]
                    if head == b"\x1f\x8b":  # a gzip blob (the containerd store's export): its diff id is of the tar
                        source = gzip.GzipFile(fileobj=_Prefixed(head, source))  # type: ignore[assignment]
                        head = b""
                    with target.open("wb") as handle:
                        digest.update(head)
                        handle.write(head)
                        while chunk := source.read(4 * 1024 * 1024):  # type: ignore[union-attr]
                            digest.update(chunk)
                            handle.write(chunk)
                    diff_id = "sha256:" + digest.hexdigest()
                    if diff_id in wanted and diff_id not in found:
                        found[diff_id] = target
                    else:
                        target.unlink()
        except (DockerException, tarfile.TarError, OSError) as exc:
            raise DockerError(f"cannot read the layers of {image_id[:19]} from the engine: {exc}") from None
        missing = wanted - set(found)
        if missing:
            raise DockerError(f"the engine's export of {image_id[:19]} lacks layer {sorted(missing)[0][:19]}: push the "
                              "image to a registry instead (--registry) and pull it")
        return found

    def pull(self, reference: str) -> str:
        """Pull REPOSITORY@DIGEST (or :TAG); return the image id."""
        from docker.errors import DockerException

        try:
            image = self.client.images.pull(reference)
        except DockerException as exc:
            raise RegistryError(f"cannot pull {reference}: {' '.join(str(exc).split())[:300]}") from None
        return str(image.id)

    def untag(self, reference: str) -> None:
        """Remove a tag (never the image it names, which other tags or ids keep)."""
        from docker.errors import DockerException

        try:
            self.client.api.remove_image(reference, noprune=True)
        except DockerException:
            pass

    def push(self, repository: str, tag: str, on_event: Callable[[dict], None],
             auth_config: dict[str, str] | None = None) -> str | None:
        """Push repository:tag; return the manifest digest the engine reported (the containerd
        image store's push of Docker 26 reports none: ask the registry then). `auth_config`:
        credentials the engine would not find in the Docker config (BUILDER_REGISTRY_USERNAME and
        _PASSWORD), handed over as the Docker SDK's X-Registry-Auth; never logged."""
        from docker.errors import DockerException

        digest = None
        try:
            for event in self.client.api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth_config):
                if "error" in event:
                    detail = event.get("errorDetail", {}).get("message") or event["error"]
                    raise RegistryError(f"push of {repository}:{tag} failed: {detail}")
                aux = event.get("aux") or {}
                digest = aux.get("Digest", digest)
                on_event(event)
        except DockerException as exc:
            raise RegistryError(f"push of {repository}:{tag} failed: {' '.join(str(exc).split())[:300]}") from None
        return digest


class _Prefixed:
    """A file object that gives `head` back before the rest of `rest` (a peek undone)."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self.head = head
        self.rest = rest

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(size)
        if size < 0:
            data, self.head = self.head + self.rest.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data + (self.rest.read(size - len(data)) if size > len(data) else b"")


class _ChunkReader:
    """A read()-able view of an iterator of byte chunks (the engine's streamed export)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def parse_gpus(value: str) -> str:
    if value not in ("auto", "all", "none"):
        raise InputError(f"--gpus {value}: expected auto, all or none")
    return value
