"""Mirror ranking (builder/ranking.py): a pure function of the ledger's rows and the configured
list; `builder stats` shows the order and why; the next build's fetch uses that order."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from builder.build import Services
from builder.config import BuilderConfig
from builder.fetch import Attempt
from builder.ledger import Ledger
from builder.ranking import HORIZON_DAYS, MirrorAttempt, rank_mirrors
from tests.conftest import run_builder, write_config
from tests.localhub import LocalHub
from tests.test_fetch import attempts_of, run_fetch

NOW = 1_800_000_000.0
DAY = 86400.0


class M:  # what rank_mirrors needs of a configured mirror: a name and a URL
    def __init__(self, name: str, url: str = "") -> None:
        self.name, self.url = name, url or f"https://{name}.example"


def rows(mirror: str, outcome: str, n: int, days_ago: float = 0.0, size: int = 1_000_000, seconds: float = 1.0) -> list:
    return [MirrorAttempt(mirror, NOW - days_ago * DAY, outcome, size if outcome == "ok" else 0, seconds)] * n


def names(configured: list[M], history: list) -> list[str]:
    return [m.name for m in rank_mirrors(configured, history, NOW)]


def test_with_no_record_the_configured_order_stands() -> None:
    ranked = rank_mirrors([M("hub"), M("olah")], [], NOW)
    assert [m.name for m in ranked] == ["hub", "olah"]
    assert all(m.record is None and m.reason.startswith("no record yet (no attempts; 3 needed)") for m in ranked)


def test_the_first_configured_mirror_that_keeps_failing_goes_last() -> None:
    history = rows("hub", "failed", 6) + rows("hub", "retry", 4) + rows("hub", "ok", 1)
    assert names([M("hub"), M("olah")], history) == ["olah", "hub"]  # olah: no record, taken as meeting the target
    history += rows("olah", "ok", 5, seconds=4.0)
    ranked = rank_mirrors([M("hub"), M("olah")], history, NOW)
    assert [m.name for m in ranked] == ["olah", "hub"]
    assert ranked[0].reason == "100% of 5 recent attempts ok (recent weigh more), 0.2 MB/s"
    assert ranked[1].reason == "9% of 11 recent attempts ok (recent weigh more), 1.0 MB/s"


def test_success_ratio_first_then_throughput() -> None:
    slow_but_sure = rows("a", "ok", 10, seconds=10.0)
    fast_but_flaky = rows("b", "ok", 9, seconds=0.1) + rows("b", "failed", 1)
    assert names([M("a"), M("b")], slow_but_sure + fast_but_flaky) == ["a", "b"]
    fast_and_sure = rows("b", "ok", 10, seconds=0.1)
    assert names([M("a"), M("b")], slow_but_sure + fast_and_sure) == ["b", "a"]


def test_close_figures_tie_and_the_configured_order_breaks_the_tie() -> None:
    # 1.00 and 1.04 MB/s are one 10% step apart at most: a tie, whatever the order of the rows
    history = rows("a", "ok", 5, seconds=1.0) + rows("b", "ok", 5, seconds=1 / 1.04)
    assert names([M("a"), M("b")], history) == ["a", "b"]
    assert names([M("b"), M("a")], history) == ["b", "a"]


def test_recent_attempts_weigh_more() -> None:
    recovered = rows("a", "failed", 20, days_ago=30) + rows("a", "ok", 5)
    decayed = rows("b", "ok", 10, days_ago=30) + rows("b", "failed", 3)
    # counted flat, a is 5/25 and b 10/13; weighted by recency a works now and b does not
    assert names([M("b"), M("a")], recovered + decayed) == ["a", "b"]


def test_never_a_mirror_that_is_not_approved() -> None:
    history = rows("rogue", "ok", 50, seconds=0.01) + rows("hub", "failed", 5)
    ranked = rank_mirrors([M("hub")], history, NOW)
    assert [m.name for m in ranked] == ["hub"]


def test_too_little_history_or_too_old_is_no_record() -> None:
    history = rows("hub", "failed", 2) + rows("hub", "failed", 50, days_ago=HORIZON_DAYS + 1)
    ranked = rank_mirrors([M("hub"), M("olah")], history, NOW)
    assert [m.name for m in ranked] == ["hub", "olah"]
    assert ranked[0].record is None and ranked[0].reason.startswith("no record yet (2 attempt(s); 3 needed)")


def test_a_proven_mirror_at_the_target_stays_ahead_of_one_without_a_record() -> None:
    history = rows("olah", "ok", 19) + rows("olah", "failed", 1)  # 95%
    assert names([M("hub"), M("olah")], history) == ["olah", "hub"]


def test_the_registry_weights_store_keeps_its_place() -> None:
    configured = [M("store", "oci://127.0.0.1:5000/weights"), M("hub"), M("olah")]
    history = rows("hub", "failed", 10) + rows("store", "failed", 10)
    ranked = rank_mirrors(configured, history, NOW)
    assert [m.name for m in ranked] == ["store", "olah", "hub"]
    assert ranked[0].reason == "registry weights store: verified bytes, kept where configured"


def _config(**extra) -> BuilderConfig:
    return BuilderConfig.model_validate({"mirrors": [{"name": "hub", "url": "https://huggingface.co"},
                                                     {"name": "olah", "url": "https://olah.internal"}], **extra})


def test_the_configuration_ranks_unless_told_not_to_and_hf_endpoint_goes_first() -> None:
    history = rows("hub", "failed", 5)
    assert [m.name for m in _config().mirror_order(None, history, NOW)] == ["olah", "hub"]
    pinned = _config(prefer_fastest_mirror=False).mirror_order(None, history, NOW)
    assert [(m.name, m.reason) for m in pinned] == [("hub", "as configured (prefer_fastest_mirror is off)"),
                                                    ("olah", "as configured (prefer_fastest_mirror is off)")]
    chosen = _config().mirror_order("https://huggingface.co", history, NOW)
    assert [(m.name, m.reason.split(":")[0]) for m in chosen] == [("hub", "HF_ENDPOINT (or --hf-endpoint) names it"),
                                                                  ("olah", "no record yet (no attempts; 3 needed)")]


def _failing_first(ledger: Ledger, first: str = "first", second: str = "second") -> None:
    """A ledger where the first configured mirror keeps failing and the second works."""
    ledger.record_attempts([Attempt("m", "ns/r", "a" * 40, f"f{i}", first, 0, 0.5, "failed", "503") for i in range(8)]
                           + [Attempt("m", "ns/r", "a" * 40, f"g{i}", second, 2_000_000, 1.0, "ok") for i in range(4)])


def test_builder_stats_shows_the_order_the_next_build_uses_and_why(tmp_path: Path) -> None:
    config = write_config(tmp_path / "builder.yaml", ("first", "https://first.example"), ("second", "https://second.example"),
                          ("spare", "https://spare.example"))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    _failing_first(ledger)
    env = {"PATH": "/usr/bin:/bin", "BUILDER_CONFIG": str(config), "BUILDER_LEDGER": str(tmp_path / "ledger.sqlite3")}
    run = run_builder(["stats"], env)
    assert run.returncode == 0, run.stderr
    order = run.stdout[run.stdout.index("the next build tries"):].splitlines()
    assert order == [
        "the next build tries the approved mirrors in this order (every model's record counts):",
        "  1. second: 100% of 4 recent attempts ok (recent weigh more), 2.0 MB/s",
        "  2. spare: no record yet (no attempts; 3 needed): placed as a mirror at the 95% target",
        "  3. first: 0% of 8 recent attempts ok (recent weigh more), no successful download",
    ]
    # HF_ENDPOINT still wins, as it says
    pinned = run_builder(["stats"], {**env, "HF_ENDPOINT": "https://first.example"})
    assert "  1. first: HF_ENDPOINT (or --hf-endpoint) names it: tried first" in pinned.stdout.splitlines()


def test_the_next_fetch_asks_the_ranked_mirrors_in_order(tmp_path: Path, hub: LocalHub, tiny_sd: Path,
                                                          demo_plan: dict) -> None:
    """Two real loopback Hubs serving the same files; the ledger says the first configured one keeps
    failing, so the fetch the build would run asks only the second."""
    with LocalHub(tmp_path / "first-hub") as first:
        first.publish("builder-demo/tiny-sd", tiny_sd)
        config = BuilderConfig.model_validate({"mirrors": [{"name": "first", "url": first.url},
                                                           {"name": "second", "url": hub.url}]})
        ledger = Ledger(tmp_path / "ledger.sqlite3")
        _failing_first(ledger)
        fetch = Services(config, ledger).fetch_config()
        assert [m.name for m in fetch.mirrors] == ["second", "first"]
        path = tmp_path / "fetch.json"
        path.write_text(json.dumps(fetch.to_json()))
        hub.clear_log()
        result = run_fetch(demo_plan, tmp_path / "cache", path, tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert {a.mirror for a in attempts_of(result) if a.outcome == "ok"} == {"second"}
        assert first.requests == [] and hub.requests


@pytest.fixture
def demo_plan(demo_manifest_data) -> dict:
    from builder.manifest import Manifest
    from builder.weights import weights_plan

    return weights_plan(Manifest.model_validate(demo_manifest_data)).to_json()


def test_the_ledger_gives_the_ranking_its_rows_within_the_horizon(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    _failing_first(ledger)
    ledger.record_attempts([Attempt("m", "ns/r", "a" * 40, "c", "cache", 0, 0.0, "cached")])
    history = ledger.mirror_ranking()
    assert {r.mirror for r in history} == {"first", "second"}  # a cache hit is no mirror's attempt
    assert len(history) == 12 and all(abs(r.at - time.time()) < 600 for r in history)
    assert ledger.mirror_ranking(now=time.time() + (HORIZON_DAYS + 1) * DAY) == []
