"""Manifest -> Dockerfile and build context.

All values are computed here, in Python, into one frozen `DockerfileContext`; the templates
only substitute, loop and branch. One cached Jinja environment with StrictUndefined, so a
misspelled variable fails instead of rendering empty. Two filters guard the two ways a value
can be misread: `sh` (shlex.quote) for anything a shell will parse, `dq` for Dockerfile
double-quoted strings (LABEL, ENV), where `$` would otherwise expand and `"` end the string.
"""

from __future__ import annotations

import functools
import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import jinja2

from builder import __version__
from builder.errors import InputError, ManifestError
from builder.manifest import Manifest
from builder.project import Project
from builder.weights import BLOB_DIR, model_dir, weights_plan

APP_UID = 10001
DEFAULT_PORT = 8000
LABEL_PREFIX = "io.builder"
# Marks the step after which the builder splices in the weights layers (builder/compose.py finds
# it in the code image's history; the layers above it are the server code and the manifest).
WEIGHTS_MARKER = "builder:weights-layers"


def dockerfile_quote(value: object) -> str:
    """A Dockerfile double-quoted string: `$` cannot expand, `"` cannot end it, no newlines."""
    text = str(value)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise InputError(f"refusing to render a control character into the Dockerfile: {text!r}")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def shell_quote(value: object) -> str:
    return shlex.quote(str(value))


@functools.lru_cache(maxsize=4)
def _environment(templates_dir: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - Dockerfiles, not HTML; quoting is by the filters below
    )
    env.filters["sh"] = shell_quote
    env.filters["dq"] = dockerfile_quote
    return env


@dataclass(frozen=True)
class RenderOptions:
    """Build-host facts that change the Dockerfile (not the manifest)."""

    base_image: str | None = None  # overrides runtime.base_image (tests, air-gapped hosts)
    ca_bundle: bool = False  # a CA bundle is passed as the ca_bundle secret
    source_revision: str | None = None  # the builder repository's git commit, for the OCI label
    source_url: str | None = None


@dataclass(frozen=True)
class DockerfileContext:
    """Every value the templates see."""

    header: str
    manifest_path: str
    manifest_digest: str
    base_image: str
    python_check: str
    weights_check: str
    manifest_name: str
    packages: tuple[str, ...]
    system_packages: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]
    model_dir: str
    uid: int
    port: int
    start_period: int
    ca_bundle: bool


def _python_check(version: str) -> str:
    """Python code that fails the build with a marker line when the base's Python is not `version`."""
    message = f"the base image has Python %s, the manifest says {version}: fix runtime.python or runtime.base_image"
    return (
        'import sys; v = "%d.%d" % sys.version_info[:2]; '
        f'sys.exit(None if v == "{version}" else "::builder-error::InputError::{message}" % v)'
    )


def _weights_check(manifest: Manifest) -> str:
    """Shell that fails the build with a marker line when the image below the weights already
    has something where they go."""
    paths = (str(BLOB_DIR.parent), str(model_dir(manifest)))
    message = (f"::builder-error::InputError::the base image already has files at {paths[0]} or {paths[1]}, where "
               "the builder puts the weights: use a base image without them")
    tests = " && ".join(f"! test -e {shlex.quote(p)}" for p in paths)
    return f"{tests} || {{ echo {shlex.quote(message)}; exit 1; }} # {WEIGHTS_MARKER}"


def labels(manifest: Manifest, options: RenderOptions) -> tuple[tuple[str, str], ...]:
    first = manifest.sources[0]
    items = [
        ("org.opencontainers.image.title", manifest.name),
        ("org.opencontainers.image.version", manifest.version),
        ("org.opencontainers.image.description", manifest.description or f"{manifest.task} model {first.repo_id}"),
        ("org.opencontainers.image.licenses", manifest.license.spdx or manifest.license.name),
        ("org.opencontainers.image.base.name", options.base_image or manifest.runtime.base_image),
        ("org.opencontainers.image.vendor", "builder"),
    ]
    if options.source_revision:
        items.append(("org.opencontainers.image.revision", options.source_revision))
    if options.source_url:
        items.append(("org.opencontainers.image.source", options.source_url))
    items += [
        (f"{LABEL_PREFIX}.model.id", first.repo_id),
        (f"{LABEL_PREFIX}.model.revision", first.revision),
        (f"{LABEL_PREFIX}.model.sources", " ".join(f"{s.repo_id}@{s.revision}" for s in manifest.sources)),
        (f"{LABEL_PREFIX}.manifest.name", manifest.name),
        (f"{LABEL_PREFIX}.manifest.version", manifest.version),
        (f"{LABEL_PREFIX}.manifest.digest", manifest.digest),
        (f"{LABEL_PREFIX}.profile", manifest.profile),
        (f"{LABEL_PREFIX}.task", manifest.task),
        (f"{LABEL_PREFIX}.license.commercial", "true" if manifest.license.commercial_use else "false"),
        (f"{LABEL_PREFIX}.locked", "true" if manifest.locked else "false"),
        (f"{LABEL_PREFIX}.builder.version", __version__),
    ]
    memory = manifest.serving.memory
    if memory.min_gpu_memory_gb is not None:  # `builder deploy` compares it with the target's GPU types
        items.append((f"{LABEL_PREFIX}.min_gpu_memory_gb", f"{memory.min_gpu_memory_gb:g}"))
    return tuple(items)


def dockerfile_context(manifest: Manifest, manifest_path: str, options: RenderOptions) -> DockerfileContext:
    runtime = manifest.runtime
    directory = model_dir(manifest)
    env = (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("HF_HUB_DISABLE_TELEMETRY", "1"),
        ("HF_HOME", "/home/app/.cache/huggingface"),
        ("BUILDER_MANIFEST", "/app/manifest.json"),
        ("BUILDER_MODEL_DIR", str(directory)),
        ("PORT", str(DEFAULT_PORT)),
        ("PYTHONPATH", "/app"),
        ("PYTHONUNBUFFERED", "1"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    )
    return DockerfileContext(
        header=f"Generated by builder {__version__}: do not edit.",
        manifest_path=manifest_path,
        manifest_digest=manifest.digest,
        base_image=options.base_image or runtime.base_image,
        python_check=_python_check(runtime.python),
        weights_check=_weights_check(manifest),
        manifest_name=manifest.name,
        packages=runtime.packages,
        system_packages=runtime.system_packages,
        env=env,
        labels=labels(manifest, options),
        model_dir=str(directory),
        uid=APP_UID,
        port=DEFAULT_PORT,
        start_period=int(manifest.smoke_test.load_timeout_seconds),
        ca_bundle=options.ca_bundle,
    )


def render_dockerfile(manifest: Manifest, manifest_path: str, options: RenderOptions, project: Project) -> str:
    context = dockerfile_context(manifest, manifest_path, options)
    env = _environment(str(project.templates_dir))
    try:
        template = env.get_template(f"{manifest.profile}.Dockerfile.j2")
        return template.render(**vars(context))
    except jinja2.TemplateNotFound as exc:
        raise ManifestError(f"{manifest_path}: profile: no template {exc.name} in {project.templates_dir}") from None


def image_manifest_json(manifest: Manifest) -> str:
    """What the server reads inside the image: the manifest plus where its files are."""
    document = manifest.model_dump(mode="json")
    document["model_dir"] = str(model_dir(manifest))
    document["manifest_digest"] = manifest.digest
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _copy_python_tree(source: Path, dest: Path) -> None:
    shutil.copytree(
        source,
        dest,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "tests"),
    )


def write_context(manifest: Manifest, manifest_path: str, options: RenderOptions, project: Project, dest: Path) -> Path:
    """Write the whole build context into dest (which must be empty or absent)."""
    for field, path in manifest.smoke_test.files.items():
        if not (project.server_dir / path).is_file():
            raise ManifestError(f"{manifest_path}: smoke_test.files.{field}: no file {path} under {project.server_dir}")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InputError(f"{dest}: the context directory must be empty")
    (dest / "Dockerfile").write_text(render_dockerfile(manifest, manifest_path, options, project), encoding="utf-8")
    (dest / "manifest.json").write_text(image_manifest_json(manifest), encoding="utf-8")
    _copy_python_tree(project.server_dir, dest / "server")
    return dest


def layer_limit_problems(manifest: Manifest, origin: str, max_bytes: int | None) -> list[str]:
    """One line per weights layer over the registry's largest layer: found before any download,
    not after an hour of upload."""
    if not max_bytes:
        return []
    problems = []
    for layer in weights_plan(manifest).layers:
        if layer.size <= max_bytes:
            continue
        what = f"file {layer.files[0]}" if layer.name != "small" else f"the {len(layer.files)} small files together"
        problems.append(
            f"{origin}: {what} is {layer.size / 1e9:.2f} GB, over the registry's largest layer "
            f"({max_bytes / 1e9:.2f} GB, push.max_layer_gb): use a registry that takes it, or set push.max_layer_gb "
            "if yours allows more"
            + (" (or lower runtime.large_file_bytes so they split)" if layer.name == "small" else "")
        )
    return problems
