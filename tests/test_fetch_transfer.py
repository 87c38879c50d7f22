"""A transfer on its own, without a network: segments in parallel, hashed in order, resumed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from builder.fetch.transfer import Segment, Transfer, TransferRun

DATA = os.urandom(5 * 1024 * 1024 + 123)
CHUNK = 1024 * 1024


def feed(run: TransferRun, segment: Segment) -> None:
    """What the range client does: the rest of the segment, in pieces, to run.receive."""
    start = segment.start + segment.done
    end = segment.start + segment.length
    for offset in range(start, end, 64 * 1024):
        if not run.receive(segment, memoryview(DATA[offset:min(offset + 64 * 1024, end)])):
            return


def test_parallel_segments_hash_to_the_file(tmp_path: Path) -> None:
    transfer = Transfer.resume_or_new(tmp_path / "f.part", len(DATA), CHUNK)
    received = []
    digest = TransferRun(transfer, 4, feed, on_received=received.append).run()
    assert digest == hashlib.sha256(DATA).hexdigest()
    assert (tmp_path / "f.part").read_bytes() == DATA and sum(received) == len(DATA)


def test_a_resumed_transfer_hashes_the_bytes_already_on_disk(tmp_path: Path) -> None:
    part = tmp_path / "f.part"
    first = Transfer.resume_or_new(part, len(DATA), CHUNK)
    with part.open("r+b") as fh:  # a killed run had finished segments 0 and 2, half of 3
        for index, upto in ((0, CHUNK), (2, CHUNK), (3, CHUNK // 2)):
            segment = first.segments[index]
            fh.seek(segment.start)
            fh.write(DATA[segment.start:segment.start + upto])
            segment.done = upto
    first.save(force=True)
    resumed = Transfer.resume_or_new(part, len(DATA), CHUNK)
    assert [s.done for s in resumed.segments][:4] == [CHUNK, 0, CHUNK, CHUNK // 2]
    asked: list[int] = []

    def fetch(run: TransferRun, segment: Segment) -> None:
        asked.append(segment.start + segment.done)
        feed(run, segment)

    assert TransferRun(resumed, 2, fetch).run() == hashlib.sha256(DATA).hexdigest()
    assert sorted(asked) == [CHUNK, 3 * CHUNK + CHUNK // 2, 4 * CHUNK, 5 * CHUNK]  # only what was missing


def test_a_failing_segment_stops_the_run(tmp_path: Path) -> None:
    transfer = Transfer.resume_or_new(tmp_path / "f.part", len(DATA), CHUNK)

    def fetch(run: TransferRun, segment: Segment) -> None:
        if segment.start == 2 * CHUNK:
            raise OSError("connection reset")
        feed(run, segment)

    with pytest.raises(OSError, match="connection reset"):
        TransferRun(transfer, 3, fetch).run()
    assert isinstance(transfer.failed, OSError)
    saved = Transfer.resume_or_new(tmp_path / "f.part", len(DATA), CHUNK)  # progress kept for a resume
    assert saved.segments[2].done == 0 and sum(s.done for s in saved.segments) == sum(s.done for s in transfer.segments)
