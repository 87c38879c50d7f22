"""What the Hub says about one repository: its commit, files, card and configs.

huggingface_hub's HfApi over the approved mirrors in order, as `builder lock` asks them (each
mirror probed first, so a dead one costs a connect, not huggingface_hub's half-minute of
retries). The first mirror that answers is used for every later question, so the commit asked
about is the one it has. A refusal is bad input, one line that says what to do: a repository
that is not there, a revision that is not there, a gated repository the token cannot read (with
the page where the licence is accepted). No mirror reachable: Unreachable, as everywhere else.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from builder import reach
from builder.errors import DownloadError, InputError, Unreachable
from builder.fetch import FetchConfig, Mirror

T = TypeVar("T")
_JSON_LIMIT = 4 * 1024 * 1024  # configs are a few kB; anything bigger is not one


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    lfs: bool
    sha256: str | None = None  # an LFS file's sha256, as the Hub lists it (plain git files have none)
    blob_id: str | None = None  # the git blob id (of the LFS pointer, for an LFS file)


@dataclass(frozen=True)
class RepoFacts:
    """One repository at one commit, as the Hub describes it."""

    repo_id: str
    repo_type: str
    asked: str  # the revision as given (a branch, tag or commit)
    commit: str
    mirror: str  # the name of the mirror that answered
    page: str  # the repository's page on that mirror (where a gated licence is accepted)
    gated: bool
    card: dict[str, Any]  # the model card's metadata (README.md front matter)
    pipeline_tag: str | None
    library: str | None
    files: dict[str, HubFile]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> parsed JSON (model_index.json, config.json...)

    def config(self, path: str) -> dict[str, Any] | None:
        return self.configs.get(path)


def page_url(mirror_url: str, repo_id: str, repo_type: str) -> str:
    prefix = {"model": "", "space": "spaces/", "dataset": "datasets/"}[repo_type]
    return f"{mirror_url}/{prefix}{repo_id}"


class HubReader:
    """Asks the approved mirrors about one repository; the first that answers is asked from then on."""

    def __init__(self, config: FetchConfig, token: str | None, repo_id: str, repo_type: str) -> None:
        self.config = config
        self.token = token
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.mirror: Mirror | None = None

    def _api(self, mirror: Mirror):
        from huggingface_hub import HfApi

        return HfApi(endpoint=mirror.url, token=self.token or False)

    def _refusal(self, exc: Exception, mirror: Mirror, revision: str) -> tuple[str, bool] | None:
        """The Hub's no as (one line, whether it is bad input), or None for an exception that is no answer."""
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

        page = page_url(mirror.url, self.repo_id, self.repo_type)
        if isinstance(exc, GatedRepoError):
            who = "no token was passed" if self.token is None else "the token passed has no access"
            return (f"{self.repo_id} is gated and {who}: accept its licence at {page} while logged in, then set "
                    f"HF_TOKEN to a token of that account"), True
        if isinstance(exc, RevisionNotFoundError):
            return f"{self.repo_id} has no revision {revision!r} on {mirror.name}: give a branch, tag or commit listed at {page}", True
        if isinstance(exc, RepositoryNotFoundError):
            other = " (or pass --repo-type space)" if self.repo_type == "model" else ""
            return (f"no {self.repo_type} repository {self.repo_id} on {mirror.name} ({mirror.url}): check the name"
                    f"{other}; a private one needs HF_TOKEN set to a token that can read it"), True
        if isinstance(exc, HfHubHTTPError):
            status = getattr(exc.response, "status_code", None)
            if status in (401, 403):
                return f"{mirror.name} refused the token (HTTP {status}): check HF_TOKEN, or unset it", True
            return f"{mirror.name} answered {' '.join(str(exc).split())[:160]}", False
        return None

    def _ask(self, what: str, revision: str, call: Callable[[Any], T]) -> T:
        mirrors = [self.mirror] if self.mirror else list(self.config.mirrors)
        refusals: list[tuple[str, bool]] = []
        unreached: list[str] = []
        for mirror in mirrors:
            if self.mirror is None:
                why = reach.probe(mirror.url)
                if why is not None:
                    unreached.append(f"{mirror.name} {mirror.url} ({why})")
                    continue
            try:
                result = call(self._api(mirror))
            except Exception as exc:  # noqa: BLE001 - sorted below: no connection, the Hub's no, or a bug
                reason = reach.connection_failure(exc)
                if reason is not None:
                    unreached.append(f"{mirror.name} {mirror.url} ({reason})")
                    continue
                refusal = self._refusal(exc, mirror, revision)
                if refusal is None:
                    raise
                refusals.append(refusal)
                continue
            self.mirror = mirror
            return result
        if refusals:
            message, bad_input = refusals[0]  # the preferred mirror's answer
            if bad_input:
                raise InputError(message)
            raise DownloadError(f"{what}: {'; '.join(m for m, _ in refusals)}: try again later")
        raise Unreachable(f"{what}: cannot reach the Hub at {'; '.join(unreached)}: check {reach.HUB}")

    # -- the questions ------------------------------------------------------------------
    def info(self, revision: str) -> Any:
        return self._ask(f"cannot look up {self.repo_id}", revision,
                         lambda api: api.repo_info(self.repo_id, revision=revision, repo_type=self.repo_type))

    def tree(self, commit: str) -> dict[str, HubFile]:
        from huggingface_hub.hf_api import RepoFile

        def call(api: Any) -> dict[str, HubFile]:
            entries = api.list_repo_tree(self.repo_id, revision=commit, recursive=True, repo_type=self.repo_type)
            return {e.path: HubFile(e.path, e.size, e.lfs is not None, e.lfs.sha256 if e.lfs else None, e.blob_id)
                    for e in entries if isinstance(e, RepoFile)}

        return self._ask(f"cannot list {self.repo_id}@{commit[:12]}", commit, call)

    def check_access(self, commit: str, path: str) -> None:
        """A gated repository's metadata is public on the Hub; its files are not: ask for one."""
        from huggingface_hub import hf_hub_url

        def call(api: Any) -> None:
            url = hf_hub_url(self.repo_id, path, revision=commit, repo_type=self.repo_type, endpoint=api.endpoint)
            api.get_hf_file_metadata(url=url)

        self._ask(f"cannot read {self.repo_id}", commit, call)

    def json(self, commit: str, path: str, cache_dir: Path) -> dict[str, Any]:
        def call(api: Any) -> str:
            return api.hf_hub_download(self.repo_id, path, revision=commit, repo_type=self.repo_type, cache_dir=cache_dir)

        local = Path(self._ask(f"cannot download {path} from {self.repo_id}", commit, call))
        try:
            data = json.loads(local.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{self.repo_id}@{commit[:12]}: {path} is not valid JSON ({exc}): the repository is broken "
                             f"at this revision; try another") from None
        if not isinstance(data, dict):
            raise InputError(f"{self.repo_id}@{commit[:12]}: {path} is not a JSON object: the repository is broken at this revision")
        return data


def _card(info: Any) -> dict[str, Any]:
    card = getattr(info, "card_data", None)
    if card is None:
        return {}
    return card.to_dict() if hasattr(card, "to_dict") else dict(card)


def read_repo(repo_id: str, repo_type: str, revision: str, config: FetchConfig, token: str | None) -> RepoFacts:
    """The repository at `revision`: its info, its file tree, and the JSON the draft reads:
    model_index.json, config.json, and the config.json of each folder model_index.json names."""
    reader = HubReader(config, token, repo_id, repo_type)
    info = reader.info(revision)
    commit = info.sha
    mirror = reader.mirror
    files = reader.tree(commit)
    if not files:
        raise InputError(f"{repo_id}@{commit[:12]} has no files: nothing to draft a manifest from")
    gated = bool(getattr(info, "gated", False))
    if gated:
        reader.check_access(commit, "README.md" if "README.md" in files else sorted(files)[0])
    configs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="builder-new-") as tmp:
        def read(path: str) -> None:
            if files[path].size > _JSON_LIMIT:
                raise InputError(f"{repo_id}@{commit[:12]}: {path} is {files[path].size} bytes, too big for a config")
            configs[path] = reader.json(commit, path, Path(tmp))

        for path in ("model_index.json", "config.json"):
            if path in files:
                read(path)
        for folder in (configs.get("model_index.json") or {}):
            if not folder.startswith("_") and f"{folder}/config.json" in files:
                read(f"{folder}/config.json")
    return RepoFacts(
        repo_id=repo_id, repo_type=repo_type, asked=revision, commit=commit, mirror=mirror.name,
        page=page_url(mirror.url, repo_id, repo_type), gated=gated, card=_card(info),
        pipeline_tag=getattr(info, "pipeline_tag", None), library=getattr(info, "library_name", None),
        files=files, configs=configs,
    )
