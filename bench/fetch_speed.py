"""Fetch-and-verify speed: builder's fetch engine vs huggingface_hub.snapshot_download + sha256sum.

    .venv/bin/python -m bench.fetch_speed [--gib 2.2] [--files 4]

One session, one machine, the loopback Hub serving the same files to each contender (each a
separate process, so its peak memory is its own):

- baseline: `snapshot_download(repo, revision=commit, local_dir=...)`, then `sha256sum` over
  the files (what a careful script does today: huggingface_hub checks sizes only);
- ours: `FetchEngine.fetch` into a fresh cache: parallel ranges, sha256 while the bytes
  arrive, rename into place after both checks;
- ours without hashing: the same with a no-op hash, to measure what verification adds.

Prints wall seconds, speedup over the baseline, verification overhead, peak RSS of each
process, and `openssl speed -evp sha256` for scale. The export copy a build then makes
(cache -> layer directory) is reported on its own line; the baseline has no such step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.localhub import LocalHub

ROOT = Path(__file__).resolve().parent.parent
REPO = "bench/big-model"


def _child(kind: str, spec_path: Path) -> None:
    """Run one contender in this (child) process; print its wall seconds as JSON."""
    spec = json.loads(spec_path.read_text())
    started = time.perf_counter()
    if kind == "baseline":
        from huggingface_hub import snapshot_download

        target = Path(spec["out"])
        snapshot_download(REPO, revision=spec["commit"], local_dir=target, endpoint=spec["url"], token=False)
        files = [str(target / f["path"]) for f in spec["files"]]
        out = subprocess.run(["sha256sum", *files], check=True, capture_output=True, text=True).stdout
        sums = {Path(line.split(None, 1)[1].strip()).name: line.split()[0] for line in out.splitlines()}
        assert all(sums[Path(f["path"]).name] == f["sha256"] for f in spec["files"]), "baseline hash mismatch"
    else:
        import builder.fetch as fetch
        import builder.fetch.transfer as transfer

        if kind == "nohash":
            class _NoHash:
                counter = 0

                def __init__(self, *args: object) -> None:
                    _NoHash.counter += 1
                    self.name = f"{_NoHash.counter:064x}"

                def update(self, data: bytes) -> None:
                    return None

                def hexdigest(self) -> str:
                    return self.name

            transfer.hashlib = type("shim", (), {"sha256": _NoHash})  # type: ignore[assignment]
        config = fetch.FetchConfig(mirrors=(fetch.Mirror("local", spec["url"]),), progress_seconds=3600,
                                   **({"chunk_bytes": spec["chunk_bytes"]} if spec.get("chunk_bytes") else {}))
        engine = fetch.FetchEngine(config, None, fetch.ContentCache(Path(spec["out"])), "bench", log=lambda line: None)
        items = [fetch.PlannedFile(REPO, "model", spec["commit"], f["path"], f["path"],
                                   None if kind == "nohash" else f["sha256"], f["size"], "small") for f in spec["files"]]
        engine.fetch(items)
    print(json.dumps({"seconds": time.perf_counter() - started}))


def _run_child(kind: str, spec: dict, tmp: Path) -> dict:
    spec_path = tmp / f"{kind}.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, "-m", "bench.fetch_speed", "--child", kind, str(spec_path)],
                            stdout=subprocess.PIPE, cwd=ROOT, text=True,
                            env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                                 "HF_HOME": str(tmp / f"hf-{kind}")})
    _, status, usage = os.wait4(proc.pid, 0)
    stdout = proc.stdout.read() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind} failed")
    result: dict = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return result


def _median(rows: list[dict]) -> dict:
    """The run with the median wall time (its other figures come with it), and every time seen."""
    ordered = sorted(rows, key=lambda r: r["seconds"])
    return {**ordered[(len(ordered) - 1) // 2], "all_seconds": [round(r["seconds"], 2) for r in rows]}


def _openssl_sha256() -> str:
    try:
        out = subprocess.run(["openssl", "speed", "-seconds", "2", "-evp", "sha256"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "openssl not available"
    line = next((row for row in out.splitlines() if row.lower().startswith("sha256")), "")
    numbers = re.findall(r"([\d.]+)k", line)
    return f"{float(numbers[-1]) / 1000:.0f} MB/s (16 KiB blocks)" if numbers else out.strip()[-200:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=2.2, help="total size of the large files")
    parser.add_argument("--files", type=int, default=4, help="how many large files")
    parser.add_argument("--chunk-mib", type=int, default=0, help="range size (default: the engine's)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds; the order of the contenders alternates between rounds (medians are reported)")
    parser.add_argument("--link-mbps", type=float, default=0,
                        help="emulate a link of this many MB/s shared by all responses (0: loopback speed)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory(prefix="bench-fetch-", dir=os.environ.get("BENCH_TMP")) as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repo"
        repo.mkdir()
        size = int(args.gib * 2**30 / args.files)
        chunk = os.urandom(16 * 2**20)
        files = []
        for i in range(args.files):
            path = repo / f"model-{i:05d}-of-{args.files:05d}.safetensors"
            with path.open("wb") as fh:
                for start in range(0, size, len(chunk)):
                    fh.write(chunk[: min(len(chunk), size - start)][:-1] + bytes([i]))  # distinct files
        (repo / "config.json").write_text(json.dumps({"files": args.files}))
        for path in sorted(repo.iterdir()):
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while block := fh.read(2**24):
                    digest.update(block)
            files.append({"path": path.name, "size": path.stat().st_size, "sha256": digest.hexdigest()})
        total = sum(f["size"] for f in files)
        with LocalHub(tmp / "hub", link_rate=int(args.link_mbps * 1e6) or None) as hub:
            commit = hub.serve_in_place(REPO, repo)
            common = {"url": hub.url, "commit": commit, "files": files, "chunk_bytes": args.chunk_mib * 2**20}
            runs: dict[str, list[dict]] = {"baseline": [], "ours": [], "nohash": []}
            order = ["baseline", "ours", "nohash"]
            for round_ in range(args.repeat):
                for kind in (order if round_ % 2 == 0 else order[::-1]):  # no contender always goes first
                    out = tmp / f"out-{kind}-{round_}"
                    spec = {**common, "out": str(out)}
                    runs[kind].append(_run_child(kind, spec, tmp))
                    shutil.rmtree(out, ignore_errors=True)  # every run starts cold and the disk stays small
            results = {kind: _median(rows) for kind, rows in runs.items()}
    base, ours, nohash = (results[k]["seconds"] for k in ("baseline", "ours", "nohash"))
    gb = total / 1e9
    link = f", link emulated at {args.link_mbps:g} MB/s" if args.link_mbps else ", loopback at full speed"
    print(f"{len(files)} files, {gb:.2f} GB from the loopback Hub{link}; {os.cpu_count()} CPUs")
    print(f"{'contender (median of ' + str(args.repeat) + ')':44} {'seconds':>8} {'GB/s':>6} {'client CPU s':>13} "
          f"{'peak RSS MB':>12}  every run")
    rows = [("snapshot_download + sha256sum (baseline)", "baseline"),
            ("builder fetch: download + verify", "ours"),
            ("builder fetch: download only (no hash)", "nohash")]
    for label, key in rows:
        r = results[key]
        print(f"{label:44} {r['seconds']:8.2f} {gb / r['seconds']:6.2f} {r['cpu_seconds']:13.1f} {r['peak_rss_mb']:12.0f}"
              f"  {r['all_seconds']}")
    print(f"speedup over the baseline: {base / ours:.2f}x (goal >= 1.5x)")
    print(f"verification overhead: {100 * (ours - nohash) / nohash:+.1f}% over downloading alone (goal <= 5%)")
    print(f"openssl speed -evp sha256: {_openssl_sha256()}")


if __name__ == "__main__":
    main()
