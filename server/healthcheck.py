"""The image's HEALTHCHECK: exit 0 when the model is loaded and the process serving it lives.

HTTP mode asks /ready. Queue mode has no port to ask: the worker writes its pid to a ready file
once the model is loaded (and removes it when it stops); the check also asks whether that pid
still runs, so a worker killed without cleaning up (the runpod SDK's fitness checks end it with
os._exit) is not reported healthy."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from server.settings import Settings, SettingsError


def mark_ready(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(str(os.getpid()), encoding="ascii")
    partial.replace(path)  # atomic: the check never reads half a pid


def clear_ready(path: Path) -> None:
    path.unlink(missing_ok=True)


def worker_ready(path: Path) -> bool:
    try:
        pid = int(path.read_text(encoding="ascii"))
        os.kill(pid, 0)
    except PermissionError:  # it runs, as another user
        return True
    except (OSError, ValueError):
        return False
    return True


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError:
        return 1
    if settings.serve_mode == "queue":
        return 0 if worker_ready(settings.ready_file) else 1
    url = f"http://127.0.0.1:{settings.port}/ready"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - loopback, fixed scheme
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
