"""Serve a directory of repositories as a Hub on loopback (the demo's Hub).

python -m tests.localhub --root DIR [--port N] [--publish NS/NAME=SRC_DIR ...] [--ready-file F]
Each NS/NAME directory under --root is served; --publish copies SRC_DIR in first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.localhub.server import LocalHub


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.localhub")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--publish", action="append", default=[], metavar="NS/NAME=DIR")
    parser.add_argument("--ready-file", type=Path, help="write the base URL here once serving")
    args = parser.parse_args()
    hub = LocalHub(args.root, args.host, args.port)
    for spec in args.publish:
        repo_id, _, source = spec.partition("=")
        hub.publish(repo_id, Path(source))
    for ns_dir in sorted(p for p in args.root.iterdir() if p.is_dir()) if args.root.exists() else []:
        for repo_dir in sorted(p for p in ns_dir.iterdir() if p.is_dir()):
            repo_id = f"{ns_dir.name}/{repo_dir.name}"
            if repo_id not in hub.state.repos:
                hub.serve_in_place(repo_id, repo_dir)
    for repo in hub.state.repos.values():
        print(f"localhub: {repo.repo_id}@{repo.commit} ({len(repo.files)} files)", flush=True)
    if args.ready_file:
        args.ready_file.write_text(hub.url)
    print(f"localhub: serving {hub.url}", flush=True)
    hub.serve_forever()


if __name__ == "__main__":
    main()
