"""The order the approved mirrors are tried in: a pure function of the ledger's rows and the
configured list (no I/O, no clock: `now` is passed in).

- Only configured mirrors are ever in the result; ledger rows for any other name are ignored.
- A registry weights store (`oci://`) holds only bytes some build already verified: it keeps
  its configured place and is not ranked; the Hub-compatible mirrors are ranked in the places
  that remain.
- A mirror has a record once it has MIN_ATTEMPTS attempts (ok, retry or failed; cache hits are
  no mirror's) within HORIZON_DAYS. Its score: the success ratio, then the throughput of its
  successful downloads, each weighted by recency (an attempt's weight halves every
  HALF_LIFE_DAYS, so a mirror that failed last month and works this week ranks by this week).
- A mirror goes ahead of one configured before it only when it is clearly better: a success
  ratio more than RATIO_STEP higher, or one as good and a throughput more than THROUGHPUT_STEP
  times higher. Anything closer is a tie, and a tie keeps the configured order: a coin-flip
  difference never reorders what someone configured.
- A mirror without a record counts as meeting the target (TARGET_RATIO) with no known
  throughput: a proven mirror at the target stays ahead of it, one below the target falls
  behind it (a new mirror gets its chance when the known one keeps failing), and with no record
  anywhere the configured order stands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

TARGET_RATIO = 0.95  # the download success ratio the project commits to (and alerts under)
MIN_ATTEMPTS = 3
HALF_LIFE_DAYS = 7.0
HORIZON_DAYS = 60.0  # older rows weigh under 0.3%: the ledger is not asked for them
RATIO_STEP = 0.01  # ratios within a percentage point tie
THROUGHPUT_STEP = 1.1  # throughputs within 10% tie
_DAY = 86400.0


class MirrorAttempt(NamedTuple):
    """One download attempt as the ledger holds it (builder/ledger: download_attempts)."""

    mirror: str
    at: float  # Unix time
    outcome: str  # ok | retry | failed (cached rows are not passed)
    bytes: int
    seconds: float


class Configured(Protocol):
    name: str
    url: str


@dataclass(frozen=True)
class Record:
    """A mirror's recency-weighted record."""

    attempts: int  # unweighted, within the horizon
    ratio: float  # weighted share of attempts that succeeded
    throughput: float  # weighted bytes per second of the successful ones (0: none succeeded)


@dataclass(frozen=True)
class RankedMirror:
    name: str
    url: str
    record: Record | None  # None: not ranked (a weights store) or too little history
    reason: str


def weight(at: float, now: float) -> float:
    return 0.5 ** (max(0.0, now - at) / _DAY / HALF_LIFE_DAYS)


def records(rows: Iterable[MirrorAttempt], now: float) -> dict[str, Record]:
    """Each mirror's record from its rows (rows older than the horizon are left out)."""
    sums: dict[str, list[float]] = {}  # mirror -> [attempts, w, w*ok, w*bytes_ok, w*seconds_ok]
    for row in rows:
        if row.outcome not in ("ok", "retry", "failed") or now - row.at > HORIZON_DAYS * _DAY:
            continue
        w = weight(row.at, now)
        s = sums.setdefault(row.mirror, [0, 0.0, 0.0, 0.0, 0.0])
        s[0] += 1
        s[1] += w
        if row.outcome == "ok":
            s[2] += w
            s[3] += w * row.bytes
            s[4] += w * row.seconds
    return {mirror: Record(int(n), ok / total if total else 0.0, good_bytes / good_seconds if good_seconds > 0 else 0.0)
            for mirror, (n, total, ok, good_bytes, good_seconds) in sums.items()}


def _score(record: Record | None) -> tuple[float, float]:
    """(ratio, throughput) as the ranking compares them; no record: the target, no throughput."""
    if record is None or record.attempts < MIN_ATTEMPTS:
        return TARGET_RATIO, 0.0
    return record.ratio, record.throughput


def _beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether a is clearly better than b (see the module's docstring)."""
    if a[0] > b[0] + RATIO_STEP:
        return True
    return abs(a[0] - b[0]) <= RATIO_STEP and a[1] > b[1] * THROUGHPUT_STEP


def _order(scores: list[tuple[float, float]]) -> list[int]:
    """Indexes in ranked order: each mirror, in configured order, goes just ahead of the first
    one already placed that it clearly beats, else last."""
    placed: list[int] = []
    for i, score in enumerate(scores):
        at = next((n for n, j in enumerate(placed) if _beats(score, scores[j])), len(placed))
        placed.insert(at, i)
    return placed


def _describe(record: Record | None) -> str:
    if record is None or record.attempts < MIN_ATTEMPTS:
        seen = f"{record.attempts} attempt(s)" if record else "no attempts"
        return f"no record yet ({seen}; {MIN_ATTEMPTS} needed): placed as a mirror at the {TARGET_RATIO:.0%} target"
    speed = f"{record.throughput / 1e6:.1f} MB/s" if record.throughput > 0 else "no successful download"
    return f"{record.ratio:.0%} of {record.attempts} recent attempts ok (recent weigh more), {speed}"


def rank_mirrors(configured: Sequence[Configured], rows: Iterable[MirrorAttempt], now: float) -> list[RankedMirror]:
    """The configured mirrors in the order to try them, each with why it is there."""
    found = records((r for r in rows if any(r.mirror == m.name for m in configured)), now)
    stores = [i for i, m in enumerate(configured) if m.url.startswith("oci://")]
    mirrors = [i for i in range(len(configured)) if i not in stores]

    ranked = iter(mirrors[n] for n in _order([_score(found.get(configured[i].name)) for i in mirrors]))
    order = [i if i in stores else next(ranked) for i in range(len(configured))]
    result = []
    for i in order:
        entry = configured[i]
        if i in stores:
            result.append(RankedMirror(entry.name, entry.url, None, "registry weights store: verified bytes, kept "
                                                                      "where configured"))
            continue
        record = found.get(entry.name)
        usable = record if record is not None and record.attempts >= MIN_ATTEMPTS else None
        result.append(RankedMirror(entry.name, entry.url, usable, _describe(record)))
    return result


def as_configured(configured: Sequence[Configured], why: str) -> list[RankedMirror]:
    """The configured order, each with the same reason (ranking off, or nothing to rank)."""
    return [RankedMirror(m.name, m.url, None, why) for m in configured]
