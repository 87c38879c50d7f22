"""Progress: bytes received across every file and range, reported as lines with bytes per second."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


class Progress:
    """Counters shared by the download threads, and a reporter that logs them periodically."""

    def __init__(self) -> None:
        self.bytes = 0
        self.total = 0
        self.active = 0
        self.lock = threading.Lock()

    def add(self, received: int = 0, total: int = 0, active: int = 0) -> None:
        with self.lock:
            self.bytes += received
            self.total += total
            self.active += active

    def report_every(self, seconds: float, log: Callable[[str], None], stop: threading.Event) -> None:
        """Log a progress line every `seconds` until stop is set (run it in a thread)."""
        started = last_time = time.monotonic()
        last_bytes = 0
        while not stop.wait(seconds):
            with self.lock:
                done, total, active = self.bytes, self.total, self.active
            now = time.monotonic()
            rate = (done - last_bytes) / max(now - last_time, 1e-6)
            last_bytes, last_time = done, now
            share = f" of {human(total)} ({100 * done / total:.0f}%)" if total else ""
            log(f"progress: {human(done)}{share}, {human(rate)}/s now, "
                f"{human(done / max(now - started, 1e-6))}/s average, {active} file(s) active")
