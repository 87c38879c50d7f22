"""`python3 -m builder.fetch`: the weights stage's fetch, and the cache tool (`cache ls|verify|prune`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from builder.errors import BuilderError
from builder.fetch.cache import ContentCache, sha256_of
from builder.fetch.engine import FetchEngine
from builder.fetch.export import fetch_plan
from builder.fetch.markers import attempt_line, cache_line, line
from builder.fetch.oci import read_registry_auth
from builder.fetch.plan import CA_SECRET, Attempt, load_config, read_token
from builder.fetch.tls import trust_additional_cas
from builder.redact import Redactor


def _emit(row: dict) -> None:
    print(cache_line(row), flush=True)


def _verify(cache: ContentCache) -> None:
    bad = 0
    for row in cache.entries():
        with cache.locked(row["sha256"]):
            ok = sha256_of(cache.blob(row["sha256"])) == row["sha256"]
            if not ok:
                cache.evict(row["sha256"])
                bad += 1
        _emit({"kind": "verified", "sha256": row["sha256"], "ok": ok})
    print(f"verified {len(cache.entries()) + bad} blobs, removed {bad} corrupt", flush=True)


def _prune(cache: ContentCache, args: argparse.Namespace) -> None:
    keep = set(args.keep or ())
    if args.keep_file is not None:
        keep |= set(args.keep_file.read_text(encoding="utf-8").split())
    now = time.time()
    rows = sorted(cache.entries(), key=lambda r: r["last_used"])
    total = sum(r["size"] for r in rows)
    for row in rows:
        if row["sha256"] in keep:
            continue
        old = args.older_than is not None and now - row["last_used"] > args.older_than * 86400
        over = args.max_bytes is not None and total > args.max_bytes
        if not (args.all or old or over or args.unreferenced):
            continue
        with cache.locked(row["sha256"], wait=False) as got:
            if not got:
                continue  # a build is using it right now
            if not args.dry_run:
                cache.evict(row["sha256"])
            total -= row["size"]
        _emit({"kind": "removed", "dry_run": args.dry_run, **row})
    if args.partials and not args.dry_run:
        for part in (cache.root / "partial").glob("*.part"):
            key = part.name[: -len(".part")]
            with cache.locked(key, wait=False) as got:
                if not got:
                    continue  # a build is downloading it right now
                for path in (part, part.with_suffix(".json")):
                    path.unlink(missing_ok=True)


def cache_command(args: argparse.Namespace) -> int:
    cache = ContentCache(args.cache)
    if args.cache_command == "ls":
        for row in cache.entries():
            _emit({"kind": "blob", **row})
        for row in cache.partials():
            _emit({"kind": "partial", **row})
    elif args.cache_command == "verify":
        _verify(cache)
    else:
        _prune(cache, args)
    return 0


def _cache_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m builder.fetch cache")
    sub = parser.add_subparsers(dest="cache_command", required=True)
    for name in ("ls", "verify", "prune"):
        cmd = sub.add_parser(name)
        cmd.add_argument("cache", type=Path)
        if name == "prune":
            cmd.add_argument("--all", action="store_true")
            cmd.add_argument("--unreferenced", action="store_true")
            cmd.add_argument("--keep", nargs="*")
            cmd.add_argument("--keep-file", type=Path)
            cmd.add_argument("--older-than", type=float)
            cmd.add_argument("--max-bytes", type=int)
            cmd.add_argument("--partials", action="store_true")
            cmd.add_argument("--dry-run", action="store_true")
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["cache"]:
        return cache_command(_cache_parser().parse_args(argv[1:]))
    parser = argparse.ArgumentParser(prog="python3 -m builder.fetch")
    parser.add_argument("plan", type=Path)
    parser.add_argument("export", type=Path)
    parser.add_argument("--cache", type=Path, required=True, help="content-addressed cache directory")
    parser.add_argument("--config", type=Path, help="fetch configuration JSON (default: the fetch_config secret)")
    parser.add_argument("--token-file", type=Path, help="Hub token file (default: the hf_token secret)")
    args = parser.parse_args(argv)
    # A corporate CA (handed in as a secret, never baked in) adds to the system's CAs.
    trust_additional_cas(CA_SECRET if CA_SECRET.exists() else None)
    plan = json.loads(args.plan.read_text(encoding="utf-8"))
    # Every line this process prints crosses into the host's build log and ledger: none may carry
    # the token or a mirror's or proxy's credentials, whatever path it took.
    redact = Redactor()
    redact.add_environment()
    try:
        config, token = load_config(args.config), read_token(args.token_file)
        redact.add(token)
        for mirror in config.mirrors:
            redact.add_url(mirror.url)
        store_auth = read_registry_auth()
        if store_auth:
            redact.add(store_auth[1])

        def on_attempt(attempt: Attempt) -> None:
            line(redact(attempt_line(dataclasses.replace(attempt, error=attempt.error and redact(attempt.error)))))

        engine = FetchEngine(config, token, ContentCache(args.cache), plan["model"],
                             log=lambda text: line(redact(text)), on_attempt=on_attempt)
        files = fetch_plan(plan, args.export, engine)
    except BuilderError as exc:
        exc.message = redact(exc.message)
        print(exc.marker(), file=sys.stderr, flush=True)
        return 1
    downloaded = sum(f.size for f in files if f.source != "cache")
    print(f"fetched {len(files)} files, {sum(f.size for f in files)} bytes, for {plan['model']} "
          f"({downloaded} bytes downloaded, the rest from the cache)", flush=True)
    return 0
