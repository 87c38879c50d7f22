"""The command line of `python -m builder.fetch` (see __main__.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from builder.errors import BuilderError
from builder.fetch.cache import ContentCache
from builder.fetch.engine import FetchEngine
from builder.fetch.markers import attempt_line, line
from builder.fetch.plan import OFFICIAL_HUB, Attempt, FetchConfig, Mirror
from builder.fetch.tls import trust_additional_cas
from builder.redact import Redactor


def _config(path: Path | None) -> FetchConfig:
    if path is None:
        return FetchConfig(mirrors=(Mirror("hub", OFFICIAL_HUB),))
    return FetchConfig.from_json(json.loads(path.read_text(encoding="utf-8")))


def main(argv: list[str]) -> int:
    from builder.weights import frames
    from builder.weights.layout import WeightsPlan

    parser = argparse.ArgumentParser(prog="python -m builder.fetch")
    parser.add_argument("plan", type=Path, help="weights plan JSON")
    parser.add_argument("--cache", type=Path, required=True, help="content-addressed cache directory")
    parser.add_argument("--config", type=Path, help="fetch configuration JSON (mirrors, tuning)")
    parser.add_argument("--token-file", type=Path, help="file holding the Hub token")
    parser.add_argument("--ca-bundle", type=Path, help="CA bundle to trust besides the system's")
    args = parser.parse_args(argv)
    trust_additional_cas(args.ca_bundle)
    plan = WeightsPlan.from_json(json.loads(args.plan.read_text(encoding="utf-8")))
    redact = Redactor()
    redact.add_environment()
    try:
        config = _config(args.config)
        token = args.token_file.read_text(encoding="utf-8").strip() if args.token_file else None
        redact.add(token)
        for mirror in config.mirrors:
            redact.add_url(mirror.url)

        def on_attempt(attempt: Attempt) -> None:
            line(redact(attempt_line(dataclasses.replace(attempt, error=attempt.error and redact(attempt.error)))))

        cache = ContentCache(args.cache)
        engine = FetchEngine(config, token or None, cache, plan.model, log=lambda text: line(redact(text)),
                             on_attempt=on_attempt, frames=frames(plan))
        engine.check_space(engine.missing_bytes(list(plan.files)))
        files = engine.fetch(list(plan.files))
    except BuilderError as exc:
        exc.message = redact(exc.message)
        print(exc.marker(), file=sys.stderr, flush=True)
        return 1
    downloaded = sum(f.size for f in files.values() if f.source != "cache")
    print(f"fetched {len(files)} files, {sum(f.size for f in files.values())} bytes, for {plan.model} "
          f"({downloaded} bytes downloaded, the rest from the cache)", flush=True)
    return 0
