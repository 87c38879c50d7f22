"""The command line: python -m builder COMMAND.

Progress goes to stderr, results to stdout (`--json` for machines). Only `main()` catches
broadly: a BuilderError prints one line that says what to do and exits with its code (2 for bad
input, 1 for a failed build); anything else is a bug, shown as one line unless BUILDER_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import get_args

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from builder import __version__
from builder.errors import BuilderError, ManifestError
from builder.manifest import Manifest, Task  # the choices of `new` are the manifest's own

# markup=False: user text (manifest values, ledger rows, errors, table cells) is printed as it is;
# the few styled lines ask for markup and escape what they interpolate.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def _out() -> Console:
    return Console(markup=False, highlight=False)


def _project(ctx: click.Context):
    from builder.project import Project

    return Project.locate(ctx.obj.get("root"))


def _services(ctx: click.Context, project):
    from builder.build import Services
    from builder.config import load_config
    from builder.ledger import Ledger

    config = load_config(project.root, ctx.obj.get("config"))
    return Services(config, Ledger(config.ledger_location))


def _layer_limit(ctx: click.Context, project, registry: str | None) -> int | None:
    """The largest layer the registry takes (push.max_layer_gb, else what the registry documents)."""
    from builder.config import load_config
    from builder.registry import RegistryRef

    host = RegistryRef.parse(registry).host if registry else None
    return load_config(project.root, ctx.obj.get("config")).push.max_layer_bytes(host)


def _load(project, target: str):
    from builder.manifest import display_path, load_manifest

    path = project.manifest_path(target)
    return load_manifest(path), display_path(path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Project directory (manifests/, templates/, server/).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Builder configuration (mirrors, fetch tuning, ledger); default: $BUILDER_CONFIG, else [tool.builder] in pyproject.toml.")
@click.version_option(__version__, prog_name="builder")
@click.pass_context
def cli(ctx: click.Context, root: Path | None, config_path: Path | None) -> None:
    """Bake model weights into versioned, verified inference images."""
    ctx.ensure_object(dict)
    ctx.obj["root"] = root
    ctx.obj["config"] = config_path


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per manifest on stdout.")
@click.pass_context
def validate(ctx: click.Context, targets: tuple[str, ...], as_json: bool) -> None:
    """Check manifests (NAME or PATH; default: every manifest). Lists every problem."""
    from builder.manifest import display_path, load_manifest
    from builder.render import layer_limit_problems

    project = _project(ctx)
    paths = [project.manifest_path(t) for t in targets] if targets else project.all_manifests()
    if not paths:
        raise ManifestError(f"no manifests in {project.manifests_dir}")
    failed = 0
    limit = _layer_limit(ctx, project, os.environ.get("BUILDER_REGISTRY"))
    for path in paths:
        try:
            manifest = load_manifest(path)
            too_large = layer_limit_problems(manifest, display_path(path), limit)
            if too_large:
                raise ManifestError.with_problems(too_large)
        except ManifestError as exc:
            failed += 1
            for problem in exc.problems or (str(exc),):
                err.print(f"[red]error:[/red] {escape(problem)}", markup=True)
            if as_json:
                click.echo(json.dumps({"path": display_path(path), "valid": False, "problems": list(exc.problems or (str(exc),))}))
            continue
        state = "locked" if manifest.locked else f"UNLOCKED ({len(manifest.unlocked_items())} unpinned)"
        if as_json:
            click.echo(json.dumps({"path": display_path(path), "valid": True, "name": manifest.name,
                                   "version": manifest.version, "locked": manifest.locked, "digest": manifest.digest}))
        else:
            click.echo(f"ok {display_path(path)}: {manifest.name} {manifest.version}, {manifest.profile}, {state}")
    if failed:
        raise ManifestError(f"{failed} of {len(paths)} manifests are invalid (problems listed above)")


@cli.command()
@click.argument("target")
@click.option("--context", "context_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the whole build context here instead of printing the Dockerfile.")
@click.option("--base-image", help="Use this base image instead of the manifest's runtime.base_image.")
@click.option("--ca-bundle", is_flag=True, help="Render as for a build with --ca-bundle.")
@click.pass_context
def render(ctx: click.Context, target: str, context_dir: Path | None, base_image: str | None, ca_bundle: bool) -> None:
    """Print the code image's Dockerfile and the weights layer plan, or write the build context."""
    from builder.render import RenderOptions, layer_limit_problems, render_dockerfile, write_context

    project = _project(ctx)
    manifest, origin = _load(project, target)
    too_large = layer_limit_problems(manifest, origin, _layer_limit(ctx, project, os.environ.get("BUILDER_REGISTRY")))
    if too_large:
        raise ManifestError.with_problems(too_large)
    options = RenderOptions(base_image=base_image, ca_bundle=ca_bundle)
    from builder.fetch import ContentCache
    from builder.weights.layers import plan_lines

    lines = plan_lines(manifest, ContentCache(_services(ctx, project).config.weights_cache_dir))
    if context_dir is None:
        click.echo(render_dockerfile(manifest, origin, options, project), nl=False)
        click.echo("".join(f"# {line}\n" for line in lines), nl=False)
        return
    write_context(manifest, origin, options, project, context_dir)
    (context_dir / "weights-layers.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    click.echo(str(context_dir))


def _stop_on_sigterm() -> None:
    """SIGTERM (a cancelled CI job) stops the build the way Ctrl-C does: a push in flight finishes
    the chunks it is sending and keeps them for the next run."""
    import signal

    def interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


class _PushProgress:
    """One progress bar over a whole push on a terminal; without one (CI logs), a plain line every
    few seconds. Takes the builder's push progress, or the engine's push events."""

    def __init__(self, every: float = 5.0) -> None:
        self.layers: dict[str, tuple[int, int]] = {}
        self.tty = err.is_terminal
        self.every = every
        self.started: float | None = None
        self.last_line = 0.0
        self.progress = Progress(TextColumn("push"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=err, transient=True, disable=not self.tty)
        self.task = self.progress.add_task("push", total=None)

    def __call__(self, event) -> None:
        import time

        if isinstance(event, dict):
            done, total = self._engine_event(event)
        else:
            done, total = event.done, event.total
        now = time.monotonic()
        if self.started is None:  # the first line after `every` seconds, with a rate to go on
            self.started = self.last_line = now
        self.progress.update(self.task, completed=done, total=total or None)
        if not self.tty and now - self.last_line >= self.every and total:
            self.last_line = now
            rate = done / max(now - self.started, 1e-3)
            left = f", {(total - done) / rate:.0f} s left" if rate > 0 and done < total else ""
            err.print(f"    push: {done / 1e9:.2f} of {total / 1e9:.2f} GB ({done / total:.0%}), "
                      f"{rate / 1e6:.0f} MB/s{left}", markup=False)

    def _engine_event(self, event: dict) -> tuple[int, int]:
        detail = event.get("progressDetail") or {}
        layer = event.get("id")
        if layer and event.get("status") == "Pushing" and detail.get("total"):
            self.layers[layer] = (detail.get("current", 0), detail["total"])
        elif layer and event.get("status") in ("Pushed", "Layer already exists") and layer in self.layers:
            self.layers[layer] = (self.layers[layer][1], self.layers[layer][1])
        return sum(c for c, _ in self.layers.values()), sum(t for _, t in self.layers.values())


@cli.command()
@click.argument("target")
@click.option("--registry", envvar="BUILDER_REGISTRY", help="HOST[:PORT][/NAMESPACE] to push to ($BUILDER_REGISTRY).")
@click.option("--push/--no-push", default=True, show_default=True, help="Push after the smoke test passes.")
@click.option("--base-image", help="Build on this image instead of the manifest's runtime.base_image.")
@click.option("--gpus", type=click.Choice(["auto", "all", "none"]), default="auto", show_default=True,
              help="Run the smoke test on the GPU: auto uses one when the engine has the NVIDIA runtime.")
@click.option("--no-cache", is_flag=True, help="Run every build step again; the weights and pip caches stay.")
@click.option("--network", default="auto", show_default=True,
              help="Network for build steps: host, default or none; auto: host where the engine has no bridge "
                   "network (dockerd --bridge=none), else the engine's default.")
@click.option("--ca-bundle", type=click.Path(dir_okay=False, path_type=Path), envvar="BUILDER_CA_BUNDLE",
              help="CA bundle for a TLS-intercepting proxy, passed as a build secret, never stored in the image.")
@click.option("--pip-conf", type=click.Path(dir_okay=False, path_type=Path), envvar="BUILDER_PIP_CONF",
              help="pip.conf (index URL with credentials...) passed as a build secret.")
@click.option("--hf-endpoint", help="Mirror to try first (default: $HF_ENDPOINT); must be an approved mirror.")
@click.option("--assemble-only", is_flag=True,
              help="Push the image by digest, untagged, without a smoke test; large files go from the mirror to "
                   "the registry without touching the disk. `builder smoke REF@DIGEST` then tags it on a GPU host.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Do not echo the build log.")
@click.pass_context
def build(ctx: click.Context, target: str, registry: str | None, push: bool, base_image: str | None, gpus: str,
          no_cache: bool, network: str, ca_bundle: Path | None, pip_conf: Path | None, hf_endpoint: str | None,
          assemble_only: bool, as_json: bool, quiet: bool) -> None:
    """Build, smoke-test and push the image for a manifest."""
    from builder.build import BuildOptions, run_build
    from builder.docker import Docker

    project = _project(ctx)
    manifest, origin = _load(project, target)
    options = BuildOptions(registry=registry, push=push, base_image=base_image, gpus=gpus, no_cache=no_cache,
                           network=network, ca_bundle=ca_bundle, pip_conf=pip_conf, hf_endpoint=hf_endpoint,
                           assemble_only=assemble_only)
    def say(message: str) -> None:
        err.print(f"[bold cyan]==>[/bold cyan] {escape(message)}", markup=True)

    def echo_build(line: str) -> None:
        if not quiet:
            sys.stderr.write(f"    {line}\n")

    push_progress = _PushProgress()
    _stop_on_sigterm()
    with push_progress.progress:
        result = run_build(manifest, origin, project, options, _services(ctx, project), Docker.connect, say,
                           echo_build, push_progress)
    if as_json:
        click.echo(result.to_json())
        return
    if assemble_only:
        click.echo(f"assembled {result.digest_reference} (untagged, not smoke-tested)")
        click.echo("smoke-test and tag it on a host with the GPU it needs:")
        click.echo(f"  python -m builder smoke {result.digest_reference}")
        return
    if result.pushed or result.already_in_registry:
        click.echo(f"pushed {result.digest_reference}")
        click.echo(f"  tag {result.tag} (immutable: a new build needs a new version)")
    else:
        click.echo(f"built {result.tag} ({result.image_id[:19]}), not pushed")
    captions = ["run it:", "then, from another shell, ask it for an output (waits for the model to load):"]
    for caption, line in zip(captions, result.run_commands):
        click.echo(caption)
        click.echo(f"  {line}")
    if result.pushed or result.already_in_registry:
        where = f" --registry {registry}" if registry else ""
        click.echo("release it, and undo a bad deploy:")
        click.echo(f"  python -m builder promote {result.name} {result.version} --to staging{where}")
        click.echo(f"  python -m builder deploy {result.name} {result.version} --target endpoint:ID{where}")
        click.echo(f"  python -m builder rollback {result.name} --target endpoint:ID{where}")


@cli.command("smoke")
@click.argument("reference", metavar="REGISTRY/NAME@sha256:DIGEST")
@click.option("--gpus", type=click.Choice(["auto", "all", "none"]), default="auto", show_default=True,
              help="Run the smoke test on the GPU: auto uses one when the engine has the NVIDIA runtime.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def smoke(ctx: click.Context, reference: str, gpus: str, as_json: bool) -> None:
    """Pull an image `build --assemble-only` pushed by digest, smoke-test it, then tag its version."""
    from builder.docker import Docker
    from builder.smoke import parse_digest_reference, smoke_and_tag

    project = _project(ctx)
    _, name, _ = parse_digest_reference(reference)
    manifest, origin = _load(project, name)

    def say(message: str) -> None:
        err.print(f"[bold cyan]==>[/bold cyan] {escape(message)}", markup=True)

    _stop_on_sigterm()
    done = smoke_and_tag(reference, manifest, origin, Docker.connect(), _services(ctx, project).ledger, gpus, say)
    if as_json:
        click.echo(json.dumps({"reference": done.reference, "tag": done.tag, "smoke": done.smoke,
                               "already_tagged": done.already_tagged}, indent=2, sort_keys=True))
        return
    click.echo(f"smoke passed; tagged {done.tag}" + (" (it already was)" if done.already_tagged else ""))
    click.echo(f"  {done.reference}")


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when a lock is stale or incomplete (for CI).")
@click.option("--hf-endpoint", help="Mirror to ask first (default: $HF_ENDPOINT); must be an approved mirror.")
@click.pass_context
def lock(ctx: click.Context, targets: tuple[str, ...], check: bool, hf_endpoint: str | None) -> None:
    """Pin manifests (NAME or PATH; default: every manifest): commits, files, sha256 and sizes."""
    from builder.build import hub_token
    from builder.lock import lock_manifest
    from builder.manifest import display_path

    project = _project(ctx)
    services = _services(ctx, project)
    fetch_config = services.fetch_config(hf_endpoint)
    paths = [project.manifest_path(t) for t in targets] if targets else project.all_manifests()
    stale = 0
    for path in paths:
        origin = display_path(path)
        report = lock_manifest(path, origin, fetch_config, hub_token(), check, log=lambda line: err.print(f"    {line}", markup=False))
        if not report.changes:
            click.echo(f"ok {origin}: locked and up to date")
            continue
        stale += 1
        verb = "stale" if check else "locked"
        click.echo(f"{verb} {origin}:")
        for change in report.changes:
            click.echo(f"  {change}")
    if check and stale:
        from builder.errors import BuilderError as _Error

        raise _Error(f"{stale} of {len(paths)} manifests need `python -m builder lock` (changes listed above)")


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON list: each manifest, its sources, the changed files, "
                                                      "and a Markdown summary for a pull request.")
@click.option("--hf-endpoint", help="Mirror to ask first (default: $HF_ENDPOINT); must be an approved mirror.")
@click.pass_context
def outdated(ctx: click.Context, targets: tuple[str, ...], as_json: bool, hf_endpoint: str | None) -> None:
    """Which manifests' tracked branches or tags (a source's `ref`) moved upstream, and what changed.

    Changes nothing; exit 1 when a manifest could not be checked (each is still reported)."""
    from builder.build import hub_token
    from builder.errors import BuilderError as _Error
    from builder.outdated import check_manifests, text_lines

    project = _project(ctx)
    services = _services(ctx, project)
    paths = [project.manifest_path(t) for t in targets] if targets else project.all_manifests()
    results = check_manifests(paths, services.fetch_config(hf_endpoint), hub_token(),
                              log=lambda line: err.print(f"    {line}", markup=False))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for result in results:
            click.echo("\n".join(text_lines(result)))
    failed = [r.name for r in results if r.status == "error"]
    if failed:
        raise _Error(f"{len(failed)} manifest(s) could not be checked ({', '.join(failed)}): see the lines above")


@cli.command("new")
@click.argument("name")
@click.option("--from", "source", required=True, metavar="ORG/REPO[@REVISION]",
              help="The Hub repository to draft from (default revision: main).")
@click.option("--repo-type", type=click.Choice(["model", "space"]), default="model", show_default=True)
@click.option("--task", type=click.Choice(get_args(Task)), help="The task, when the Hub's pipeline tag is missing or wrong.")
@click.option("--profile", type=click.Choice(get_args(Manifest.model_fields["profile"].annotation)),
              help="The build profile (default: the standard one whose loader serves the model, else custom-local).")
@click.option("--dry-run", is_flag=True, help="Print the locked draft; write nothing.")
@click.option("--hf-endpoint", help="Mirror to ask first (default: $HF_ENDPOINT); must be an approved mirror.")
@click.pass_context
def new(ctx: click.Context, name: str, source: str, repo_type: str, task: str | None, profile: str | None,
        dry_run: bool, hf_endpoint: str | None) -> None:
    """Draft manifests/NAME.yaml from what the Hub says about a repository, locked and validated.

    Exit 3: drafted, but parts marked TODO need work before it serves."""
    from builder.build import hub_token
    from builder.draft import NewRequest, draft_manifest
    from builder.manifest import display_path

    project = _project(ctx)
    services = _services(ctx, project)
    fetch_config = services.fetch_config(hf_endpoint)
    request = NewRequest(name, source, repo_type, task, profile, dry_run)
    result = draft_manifest(request, project, fetch_config, hub_token(), log=lambda line: err.print(f"    {line}", markup=False))
    where = display_path(result.path)
    if dry_run:
        click.echo(result.text, nl=False)
        err.print(f"dry run, nothing written: {name}: {result.summary}", markup=False)
    else:
        click.echo(f"drafted {where}: {result.summary}")
    if result.todo:
        err.print(f"the draft needs work: {len(result.todo)} part(s) marked TODO(builder new) in it: "
                  + "; ".join(result.todo), markup=False)
        sys.exit(3)
    if not dry_run:
        click.echo(f"review it (each choice has its reason beside it), then: python -m builder build {name}")


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--prometheus", is_flag=True, help="Every model's download, build, smoke and push figures in the "
                                                 "Prometheus text format (textfile collector, Pushgateway).")
@click.pass_context
def stats(ctx: click.Context, name: str | None, as_json: bool, prometheus: bool) -> None:
    """Download success rate and throughput per mirror, from the ledger (optionally one model's)."""
    from rich.table import Table

    from builder.errors import InputError

    services = _services(ctx, _project(ctx))
    if prometheus:
        from builder.metrics import prometheus_text

        if name or as_json:
            raise InputError("--prometheus reports every model in its own format: leave out NAME and --json")
        click.echo(prometheus_text(services.ledger), nl=False)
        return
    rows = services.ledger.mirror_stats(name)
    if as_json:
        click.echo(json.dumps([{**vars(r), "success_rate": r.success_rate, "throughput": r.throughput} for r in rows], indent=2))
        return
    if not rows:
        click.echo(f"no download attempts recorded{f' for {name}' if name else ''} in {services.ledger.location}")
    else:
        table = Table("mirror", "attempts", "ok", "retries", "failed", "success", "downloaded", "throughput")
        for r in rows:
            table.add_row(r.mirror, str(r.attempts), str(r.ok), str(r.retries), str(r.failed), f"{r.success_rate:.0%}",
                          f"{r.bytes / 1e6:.1f} MB", f"{r.throughput / 1e6:.1f} MB/s")
        _out().print(table)
    order = services.config.mirror_order(os.environ.get("HF_ENDPOINT"), services.ledger.mirror_ranking())
    click.echo("the next build tries the approved mirrors in this order (every model's record counts):")
    for number, mirror in enumerate(order, start=1):
        click.echo(f"  {number}. {mirror.name}: {mirror.reason}")


@cli.command()
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Write the report to this file: one self-contained page (inline SVG, no script, no link out).")
@click.pass_context
def report(ctx: click.Context, html_path: Path) -> None:
    """The ledger's figures as charts, the dashboard's without Grafana: downloads per mirror against
    the 95% target, builds, smoke times, sizes, push speed, deploys and rollbacks."""
    from builder.errors import InputError
    from builder.report import write_report

    services = _services(ctx, _project(ctx))
    try:
        write_report(services.ledger, html_path)
    except OSError as exc:
        raise InputError(f"{html_path}: cannot write the report: {exc.strerror}: choose a writable path") from None
    click.echo(f"wrote {html_path}")


@cli.group()
def cache() -> None:
    """The host's content-addressed weights cache, shared by every build on this machine."""


def _cache(ctx: click.Context):
    from builder.fetch import ContentCache

    return ContentCache(_services(ctx, _project(ctx)).config.weights_cache_dir)


@cache.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cache_ls(ctx: click.Context, as_json: bool) -> None:
    """List the cached blobs, their sizes, last use and which manifests use them."""
    import datetime as dt

    from builder.cache import blob_users, listing

    rows = listing(_cache(ctx))
    users = blob_users(_project(ctx))
    for row in rows:
        row["used_by"] = sorted(users.get(row.get("sha256", ""), ()))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    blobs = [r for r in rows if r["kind"] == "blob"]
    for row in blobs:
        when = dt.datetime.fromtimestamp(row["last_used"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{row['sha256']}  {row['size']:>14,}  {when}  {', '.join(row['used_by']) or '-'}")
    partial = [r for r in rows if r["kind"] == "partial"]
    click.echo(f"{len(blobs)} blobs, {sum(r['size'] for r in blobs):,} bytes"
               + (f"; {len(partial)} partial downloads" if partial else ""))


@cache.command("prune")
@click.option("--all", "everything", is_flag=True, help="Remove every blob.")
@click.option("--unreferenced", is_flag=True, help="Remove blobs no manifest in the project pins.")
@click.option("--older-than", type=float, metavar="DAYS", help="Remove blobs not used for this many days.")
@click.option("--max-bytes", type=int, help="Remove least recently used blobs until the cache is this small.")
@click.option("--partials", is_flag=True, help="Also remove partial downloads.")
@click.option("--yes", is_flag=True, help="Really remove (the default is a dry run).")
@click.pass_context
def cache_prune(ctx: click.Context, everything: bool, unreferenced: bool, older_than: float | None,
                max_bytes: int | None, partials: bool, yes: bool) -> None:
    """Remove cached blobs (dry run unless --yes). Blobs a running build holds are skipped."""
    from builder.cache import PruneRequest, blob_users, prune

    request = PruneRequest(everything, unreferenced, older_than, max_bytes, partials, yes).check()
    keep = set(blob_users(_project(ctx))) if unreferenced else set()
    removed = prune(_cache(ctx), request, keep)
    for row in removed:
        click.echo(f"{'would remove' if not yes else 'removed'} {row['sha256']}  {row['size']:,} bytes")
    click.echo(f"{'would free' if not yes else 'freed'} {sum(r['size'] for r in removed):,} bytes in {len(removed)} blobs"
               + ("" if yes else " (dry run: add --yes)"))


@cache.command("verify")
@click.pass_context
def cache_verify(ctx: click.Context) -> None:
    """Hash every cached blob; remove any whose bytes do not match its name."""
    from builder.cache import verify
    from builder.errors import BuilderError as _Error

    rows = verify(_cache(ctx))
    bad = [r["sha256"] for r in rows if not r["ok"]]
    click.echo(f"verified {len(rows)} blobs: {len(bad)} corrupt" + (f" (removed: {', '.join(b[:16] for b in bad)})" if bad else ""))
    if bad:
        raise _Error(f"{len(bad)} cached blobs were corrupt and have been removed: check the disk of the build host")


def _registry_client(registry: str | None):
    from builder.errors import InputError
    from builder.registry import RegistryClient, RegistryRef

    if not registry:
        raise InputError("no registry: pass --registry HOST[:PORT][/NAMESPACE] or set BUILDER_REGISTRY")
    return RegistryClient(RegistryRef.parse(registry))


_registry_option = click.option("--registry", envvar="BUILDER_REGISTRY",
                                help="HOST[:PORT][/NAMESPACE] holding the images ($BUILDER_REGISTRY).")


def _when(timestamp: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON.")
@click.pass_context
def history(ctx: click.Context, name: str, as_json: bool) -> None:
    """Builds, smoke results, pushes, promotions and deployments of a model, from the ledger."""
    from rich.table import Table

    services = _services(ctx, _project(ctx))
    events = services.ledger.history(name)
    if as_json:
        click.echo(json.dumps(events, indent=2))
        return
    if not events:
        click.echo(f"no history for {name} in {services.ledger.location}")
        return
    table = Table("when (UTC)", "event", "version", "outcome", "digest", "detail")
    for e in events:
        digest = (e.get("digest") or e.get("image_id") or "")[:19]
        if e["event"] == "build":
            smoke = e.get("smoke")
            outcome = e["status"]
            detail = e.get("error") or (f"smoke {'passed' if smoke['passed'] else 'failed'} on {smoke['device']}"
                                        if smoke else "")
        elif e["event"] == "promote":
            outcome, detail = f"-> {e['stage']}", f"by {e.get('actor') or '?'}"
        else:
            outcome, detail = e["outcome"], f"{e['target']}"
        table.add_row(_when(e["at"]), e["event"], e.get("version") or "", outcome, digest, (detail or "")[:80])
    _out().print(table)


@cli.command()
@click.argument("name")
@click.argument("version")
@click.option("--to", "stage", type=click.Choice(["staging", "production"]), required=True, help="The stage.")
@_registry_option
@click.pass_context
def promote(ctx: click.Context, name: str, version: str, stage: str, registry: str | None) -> None:
    """Promote NAME:VERSION to a stage; needs its passed smoke, and for production the licence approval."""
    from builder.manifest import display_path, load_manifest
    from builder.promote import promote as do_promote

    project = _project(ctx)
    path = project.manifest_path(name)
    manifest = load_manifest(path)
    services = _services(ctx, project)
    result = do_promote(_registry_client(registry), services.ledger, manifest, display_path(path), version, stage)
    click.echo(f"promoted {name}:{version} ({result.digest}) to {stage} (recorded as {result.history_tag})")


_deploy_options = [
    click.option("--target", required=True, help="pod:ID, endpoint:ID (serverless, load-balancing or queue) or template:ID."),
    click.option("--endpoint-type", type=click.Choice(["auto", "lb", "queue"]), default="auto", show_default=True,
                 help="An endpoint's type; auto reads it from RunPod."),
    click.option("--production", is_flag=True, help="The target serves production (also: deploy.production_targets "
                                                     "in the builder configuration): needs a production promotion."),
    click.option("--force", is_flag=True, help="Override the release gates (needs --reason; recorded)."),
    click.option("--reason", help="Why the gates may be overridden, for the ledger."),
    click.option("--timeout", type=float, default=900, show_default=True, help="Seconds to wait for health."),
    click.option("--poll", type=float, default=10, show_default=True, help="Seconds between health checks."),
    _registry_option,
]


def _with_deploy_options(command):
    for option in reversed(_deploy_options):
        command = option(command)
    return command


def _deploy_call(ctx: click.Context, kw: dict):
    """What deploy and rollback share: the target, the clients, the options."""
    from builder.deploy import RunPod, Target
    from builder.deploy.release import DeployOptions

    target = Target.parse(kw["target"])
    client = _registry_client(kw["registry"])
    project = _project(ctx)
    services = _services(ctx, project)
    production = kw["production"] or str(target) in services.config.deploy.production_targets
    options = DeployOptions(kw["timeout"], kw["poll"], kw["endpoint_type"], production, kw["force"], kw["reason"],
                            services.config.deploy.keep_templates)
    return target, (RunPod(), client, services.ledger, project.manifests_dir), options


def _say(message: str) -> None:
    err.print(f"[bold cyan]==>[/bold cyan] {escape(message)}", markup=True)


@cli.command()
@click.argument("name")
@click.argument("version", required=False)
@_with_deploy_options
@click.pass_context
def deploy(ctx: click.Context, name: str, version: str | None, **kw) -> None:
    """Point a RunPod target at NAME:VERSION by digest (default: what production holds) and wait until it serves."""
    from builder.deploy.release import deploy_version

    target, clients, options = _deploy_call(ctx, kw)
    result = deploy_version(*clients, name, version, target, options, _say)
    how = f", serving as {result.mode}" if result.mode else ""
    click.echo(f"deployed {result.image} ({name} {result.version}) to {target} in {result.seconds:.0f}s{how}; "
               f"before: {result.previous_image}")
    click.echo(f"roll back with: python -m builder rollback {name} --target {target}")


@cli.command()
@click.argument("name")
@click.option("--to", "to_version", help="Roll back to this version instead of the last known-good.")
@_with_deploy_options
@click.pass_context
def rollback(ctx: click.Context, name: str, to_version: str | None, **kw) -> None:
    """Redeploy the last known-good version: the newest production promotion not running now."""
    from builder.deploy.release import roll_back

    target, clients, options = _deploy_call(ctx, kw)
    result = roll_back(*clients, name, to_version, target, options, _say)
    click.echo(f"rolled back {target} to {result.image} ({name} {result.version}) in {result.seconds:.0f}s")


@cli.command()
@click.argument("name")
@click.option("--keep", type=int, default=5, show_default=True, help="Always keep this many newest versions.")
@click.option("--older-than", type=float, default=30, show_default=True, metavar="DAYS",
              help="Only versions older than this may go.")
@click.option("--yes", is_flag=True, help="Really delete (the default is a dry run).")
@_registry_option
def prune(name: str, keep: int, older_than: float, yes: bool, registry: str | None) -> None:
    """Delete old non-production version tags; never a production version or the last known-good."""
    from builder.retention import apply_prune, plan_prune

    client = _registry_client(registry)
    plan = plan_prune(client, name, keep, older_than)
    for version, reason in plan.keep:
        click.echo(f"keep   {name}:{version.tag}  {version.digest[:19]}  ({reason})")
    for version in plan.delete:
        click.echo(f"{'delete' if yes else 'would delete'} {name}:{version.tag}  {version.digest[:19]}")
    if yes:
        deleted = apply_prune(client, name, plan, keep, older_than)
        click.echo(f"deleted {len(deleted)} versions")
    else:
        click.echo(f"dry run: {len(plan.delete)} versions would be deleted (add --yes)")


@cli.command()
@click.option("--keep", type=click.IntRange(min=1), default=2, show_default=True,
              help="Newest versions of each model whose images stay on this host.")
@click.option("--cache-hours", type=click.FloatRange(min=0), default=72, show_default=True,
              help="Build cache unused for this long goes (never the weights or pip cache mounts).")
@_registry_option
@click.option("--json", "as_json", is_flag=True, help="What was removed and freed, as JSON.")
@click.pass_context
def tidy(ctx: click.Context, keep: int, cache_hours: float, registry: str | None, as_json: bool) -> None:
    """Free this build host's disk for the next build: old model images, dangling images, stale
    build cache; never a base image, the newest --keep versions or the weights cache."""
    from builder.docker import Docker
    from builder.errors import InputError
    from builder.tidy import base_images, tidy as free_disk

    if not registry:
        raise InputError("no registry: pass --registry HOST[:PORT][/NAMESPACE] or set BUILDER_REGISTRY "
                         "(the model images to keep or remove are the ones under it)")
    project = _project(ctx)
    report = free_disk(Docker.connect().client, registry, keep, base_images(project.manifests_dir), cache_hours)
    if as_json:
        click.echo(json.dumps({"removed": report.removed, "kept": report.kept, "held": report.held,
                               "image_bytes": report.image_bytes, "cache_bytes": report.cache_bytes}))
        return
    for tag in report.removed:
        click.echo(f"removed {tag}")
    for tag in report.held:
        click.echo(f"in use, kept {tag}")
    click.echo(f"freed {report.freed / 1e9:.2f} GB (images {report.image_bytes / 1e9:.2f} GB, build cache "
               f"{report.cache_bytes / 1e9:.2f} GB); kept {len(report.kept)} model images, the bases and the "
               "weights cache")


@cli.command()
@click.option("--base", help="Git revision to compare with (a pull request's base).")
@click.option("--head", default="HEAD", show_default=True)
@click.option("--unbuilt", is_flag=True, help="Instead of --base: the manifests whose version the registry lacks "
                                               "(what main still has to build, whatever runs were cancelled).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out manifests whose name matches.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list (for a CI matrix).")
@_registry_option
@click.pass_context
def changed(ctx: click.Context, base: str | None, head: str, unbuilt: bool, exclude: tuple[str, ...], as_json: bool,
            registry: str | None) -> None:
    """The manifests to build: those a change affects (--base; all of them when builder/, templates/
    or server/ changed), or those whose version is not in the registry yet (--unbuilt)."""
    from builder.changed import affected, unbuilt as not_built
    from builder.errors import InputError

    if unbuilt == (base is not None):
        raise InputError("pass --base REF (what a change affects) or --unbuilt (what the registry lacks), one of them")
    root = _project(ctx).root
    names = not_built(root, _registry_client(registry), exclude) if unbuilt else affected(root, base, head, exclude)
    click.echo(json.dumps(names) if as_json else "\n".join(names))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--changed", "changed_only", is_flag=True,
              help="The manifests the change since --base affects whose version is not yet newer than there.")
@click.option("--base", help="Git revision to compare with (the PR base, or the previous push).")
@click.option("--head", default="HEAD", show_default=True, help="With --check: the revision to check.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out manifests whose name matches.")
@click.option("--part", type=click.Choice(["patch", "minor", "major"]), default="patch", show_default=True)
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when an affected manifest still has its "
                                              "version at --base (for CI).")
@click.pass_context
def bump(ctx: click.Context, names: tuple[str, ...], changed_only: bool, base: str | None, head: str,
         exclude: tuple[str, ...], part: str, check: bool) -> None:
    """Give manifests a new version (NAME..., or --changed --base REF): versions are immutable image tags.

    The edit touches only the `version:` line, and the result must validate."""
    from builder.errors import BuilderError as _Error, InputError
    from builder.versions import bump_manifest, stale_affected

    project = _project(ctx)
    if (check or changed_only) and not base:
        raise InputError("--check and --changed compare with a revision: pass --base REF (e.g. origin/main)")
    if check or changed_only:
        if names:
            raise InputError("name manifests, or use --changed/--check, not both")
        stale = stale_affected(project.root, base, head, exclude)
        if check:
            for problem in stale:
                click.echo(f"stale {problem}")
            if stale:
                where = "".join(f" --exclude {shlex.quote(g)}" for g in exclude)
                raise _Error(f"{len(stale)} affected manifest(s) need a new version: run `python -m builder bump "
                             f"--changed --base {shlex.quote(base)}{where}` and commit the result")
            click.echo("ok: every affected manifest has a new version")
            return
        paths = [project.manifest_path(p.name) for p in stale]
    elif names:
        paths = [project.manifest_path(n) for n in names]
    else:
        raise InputError("say what to bump: NAME..., or --changed --base REF")
    for path in paths:
        done = bump_manifest(path, part)
        click.echo(f"bumped {done.name}: {done.old} -> {done.new}")
    if not paths:
        click.echo("nothing to bump: every affected manifest already has a new version")


@cli.command()
@click.option("--write", is_flag=True, help="Write manifests/manifest.schema.json.")
@click.option("--check", is_flag=True, help="Exit 1 when the committed schema differs from the model.")
@click.pass_context
def schema(ctx: click.Context, write: bool, check: bool) -> None:
    """Print (or write, or check) the manifest JSON Schema generated from the model."""
    from builder.errors import BuilderError as _Error
    from builder.manifest import json_schema

    text = json_schema()
    path = _project(ctx).manifests_dir / "manifest.schema.json"
    if write:
        path.write_text(text, encoding="utf-8")
        click.echo(f"wrote {path}")
    elif check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            raise _Error(f"{path} is out of date: run `python -m builder schema --write` and commit it")
        click.echo(f"{path} is up to date")
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option("--write", is_flag=True, help="Write builder/monitoring/dashboard.json and alerts.yml.")
@click.option("--check", is_flag=True, help="Exit 1 when a committed file differs from what the code generates.")
def monitoring(write: bool, check: bool) -> None:
    """The Grafana dashboard and the Prometheus alert rules for `stats --prometheus` (generated)."""
    from builder.errors import BuilderError as _Error, InputError

    try:
        from builder import monitoring as generated
        if write == check:
            raise InputError("say --write (regenerate the files) or --check (compare them with the code)")
        if write:
            for path in generated.write():
                click.echo(f"wrote {path}")
            return
        stale = generated.stale()
    except ImportError as exc:
        raise InputError(f"{exc.name} is not installed: pip install -e '.[dev]'") from None
    if stale:
        raise _Error(f"{', '.join(str(p) for p in stale)} out of date: run `python -m builder monitoring --write` "
                     "and commit the result")
    click.echo("dashboard.json and alerts.yml are up to date")


class _RedactedStream:
    """A text stream that writes everything through the process's redactor (builder.redact):
    the last guard, behind the redaction where each secret is used, for whatever a message,
    a traceback or a library prints."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        from builder.redact import SECRETS

        self._stream.write(SECRETS(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> None:
    from builder.redact import SECRETS

    SECRETS.add_environment()
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _RedactedStream(sys.stdout), _RedactedStream(sys.stderr)
    try:
        _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: list[str] | None) -> None:
    try:
        cli.main(args=argv, prog_name="builder", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("interrupted")
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        err.print(f"error: {exc.format_message()} (see --help)", markup=False)
        sys.exit(exc.exit_code if exc.exit_code else 2)
    except BuilderError as exc:
        if os.environ.get("BUILDER_DEBUG") == "1":
            traceback.print_exc()
        err.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one broad catch: a bug, shown as one line
        if os.environ.get("BUILDER_DEBUG") == "1":
            traceback.print_exc()
        from builder.reach import connection_failure

        reason = connection_failure(exc)
        if reason is not None:  # a call no module wrapped with reach.reaching: still the world's fault, not a bug
            err.print(f"error: a connection failed ({reason}): {' '.join(str(exc).split())[:200]}; check the network "
                      "and proxy, and the address settings (HF_ENDPOINT, --registry, RUNPOD_API_BASE_URL, DOCKER_HOST)",
                      markup=False)
            sys.exit(1)
        err.print(f"internal error: {type(exc).__name__}: {exc} (run with BUILDER_DEBUG=1 for the traceback)", markup=False)
        sys.exit(1)
