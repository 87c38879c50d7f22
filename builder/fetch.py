"""Fetch a model's weights from the Hub, verify every byte, and lay them out for the image.

Runs in the image's `weights` build stage as `python3 -m builder.fetch PLAN EXPORT`, where only
the standard library and huggingface_hub exist (this file, errors.py and __init__.py are copied
into the build context). The plan is JSON written by `builder.render`: for each file its
repository, commit, path, destination, expected sha256 and size, and the layer it goes to.

huggingface_hub does the talking to the Hub (endpoint, auth, metadata, resumable download) but
checks only a file's size, never its content; this module checks both and refuses the build on
any difference. The export directory it leaves behind holds one directory per image layer:

    EXPORT/small/opt/models/NAME/...             every small file, plus symlinks to the blobs
    EXPORT/sha256-HEX/opt/weights/sha256/HEX     each large file alone, named by its content

so that the same large file gives the same layer in every build and every model, and a registry
stores it once. Every path gets a fixed mode and mtime so the layers are byte-for-byte
reproducible. The token is read from the BuildKit secret mount, never from the environment.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.errors import BuilderError, ChecksumMismatch, DownloadError

TOKEN_SECRET = Path("/run/secrets/hf_token")
CA_SECRET = Path("/run/secrets/ca_bundle")
FIXED_MTIME_NS = 0
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class PlannedFile:
    repo_id: str
    repo_type: str
    revision: str
    path: str
    dest: str
    sha256: str | None
    size: int | None
    layer: str

    @property
    def where(self) -> str:
        return f"{self.repo_id}@{self.revision[:12]}"


@dataclass(frozen=True)
class FetchedFile:
    dest: str
    sha256: str
    size: int
    seconds: float
    verified: bool


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_token(secret: Path | None = None) -> str | None:
    """The Hub token from the BuildKit secret mount, if the build was given one."""
    try:
        token = (secret or TOKEN_SECRET).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def _hub_error(model: str, item: PlannedFile, exc: Exception, token: str | None) -> BuilderError:
    """Turn a huggingface_hub failure into one line that says what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    page = f"{endpoint}/{item.repo_id}"
    if isinstance(exc, GatedRepoError):
        if token is None:
            return DownloadError(
                f"{model}: {item.repo_id} at {endpoint} is gated and no token was passed: accept its licence at "
                f"{page} and set HF_TOKEN to a token of that account"
            )
        return DownloadError(
            f"{model}: {item.repo_id} at {endpoint} is gated and the token passed has no access: accept the licence "
            f"at {page} with the account whose token you pass in HF_TOKEN"
        )
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(
            f"{model}: revision {item.revision} not found in {item.repo_id} at {endpoint}: check the source's revision"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(
            f"{model}: repository {item.repo_id} not found at {endpoint} (or it is private and the token has no "
            f"access): check repo_id and HF_TOKEN"
        )
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return DownloadError(f"{model}: {item.path} not found in {item.where} at {endpoint}: check the artifact's path")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code == 401:
        return DownloadError(f"{model}: {endpoint} refused the token (401) for {item.repo_id}: check HF_TOKEN")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DownloadError(
            f"{model}: disk full while fetching {item.dest}: free space where Docker keeps its build data "
            f"(docker builder prune) and build again"
        )
    detail = " ".join(str(exc).split())[:300]
    return DownloadError(f"{model}: cannot fetch {item.path} from {item.where} at {endpoint}: {detail}")


def _verify(model: str, item: PlannedFile, path: Path) -> str:
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        raise ChecksumMismatch(
            f"{model}: {item.dest} from {item.where}: size mismatch: expected {item.size} bytes, got {size}"
        )
    actual = sha256_of(path)
    if item.sha256 is not None and actual != item.sha256:
        raise ChecksumMismatch(
            f"{model}: {item.dest} from {item.where}: sha256 mismatch: expected {item.sha256}, got {actual}"
        )
    return actual


def _place(staged: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, target)


def _fix_metadata(root: Path) -> None:
    """Fixed modes and mtimes everywhere under root, so a layer's bytes depend on content only."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            path = Path(dirpath, name)
            if path.is_symlink():
                os.utime(path, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS), follow_symlinks=False)
                continue
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
            os.utime(path, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))
    os.chmod(root, 0o755)
    os.utime(root, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))


def fetch_plan(plan: dict, export: Path, token: str | None, log=print) -> list[FetchedFile]:
    """Download, verify and lay out every file of the plan under export."""
    from huggingface_hub import hf_hub_download

    model = plan["model"]
    model_dir = PurePosixPath(plan["model_dir"])
    blob_dir = PurePosixPath(plan["blob_dir"])
    items = [PlannedFile(**entry) for entry in plan["files"]]
    staging = export / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    fetched: list[FetchedFile] = []
    for index, item in enumerate(items):
        started = time.monotonic()
        try:
            local = Path(
                hf_hub_download(
                    repo_id=item.repo_id,
                    filename=item.path,
                    revision=item.revision,
                    repo_type=item.repo_type,
                    local_dir=staging / str(index),
                    token=token if token is not None else False,
                )
            )
        except BuilderError:
            raise
        except Exception as exc:  # every Hub failure becomes one actionable line
            raise _hub_error(model, item, exc, token) from None
        actual = _verify(model, item, local)
        in_model = export / "small" / model_dir.relative_to("/") / item.dest
        if item.layer == "small":
            _place(local, in_model)
        else:
            blob = export / item.layer / blob_dir.relative_to("/") / actual
            if blob.exists():
                local.unlink()  # the same bytes under two names: one blob, two links
            else:
                _place(local, blob)
            in_model.parent.mkdir(parents=True, exist_ok=True)
            in_model.symlink_to(os.path.relpath(blob_dir / actual, (model_dir / item.dest).parent))
        seconds = time.monotonic() - started
        size = (blob if item.layer != "small" else in_model).stat().st_size
        fetched.append(FetchedFile(item.dest, actual, size, seconds, item.sha256 is not None))
        state = "verified" if item.sha256 is not None else f"UNVERIFIED (unlocked) sha256={actual}"
        log(f"fetched {item.dest} from {item.where}: {size} bytes in {seconds:.1f}s, sha256 {state}")
    shutil.rmtree(staging)
    for layer_dir in export.iterdir():
        _fix_metadata(layer_dir)
    return fetched


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 -m builder.fetch PLAN.json EXPORT_DIR", file=sys.stderr)
        return 2
    if CA_SECRET.exists():  # a corporate CA, handed in as a secret, never baked in
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            os.environ[var] = str(CA_SECRET)
    plan = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        files = fetch_plan(plan, Path(argv[1]), read_token())
    except BuilderError as exc:
        print(exc.marker(), file=sys.stderr, flush=True)
        return 1
    total = sum(f.size for f in files)
    print(f"fetched {len(files)} files, {total} bytes, for {plan['model']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
