"""Every failure the builder reports is a BuilderError: one line that says what to do next.

Standard library only: this module is also copied into the weights build stage, where the
fetcher raises these same errors and the host re-raises them from the build log
(see `marker` and `from_marker`).
"""

from __future__ import annotations

import re

MARKER_PREFIX = "::builder-error::"
# Only at the start of a line's output (after BuildKit's "#N 1.234 " prefix): the same text
# inside an echoed command line, such as the Dockerfile's own RUN line, is not a marker.
_MARKER = re.compile(r"^(?:#\d+\s+\d+(?:\.\d+)?\s+)?" + re.escape(MARKER_PREFIX) + r"(\w+)::(.*)$")


class BuilderError(Exception):
    """Root of the builder's errors. `exit_code`: 2 for bad input, 1 for a failed build."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def marker(self) -> str:
        """One log line that carries this error out of a build container."""
        name = next(c.__name__ for c in type(self).__mro__ if c.__name__ in _BY_NAME)  # private subclasses report their public parent
        return f"{MARKER_PREFIX}{name}::{' '.join(self.message.split())}"


class InputError(BuilderError):
    """Bad input from the user: a flag, a path, a reference."""

    exit_code = 2


class ManifestError(InputError):
    """A manifest that does not load or validate; the message names the file and field."""

    problems: tuple[str, ...] = ()

    @classmethod
    def with_problems(cls, problems: list[str]) -> "ManifestError":
        """One error for several problems: the first in the message, all in `problems`."""
        more = len(problems) - 1
        message = problems[0] + (f" (and {more} more: run `python -m builder validate` to list them)" if more else "")
        error = cls(message)
        error.problems = tuple(problems)
        return error


class ConfigError(InputError):
    """Builder configuration or environment that cannot work (missing token, bad registry...)."""


class DownloadError(BuilderError):
    """A weight file could not be fetched from the Hub."""


class ChecksumMismatch(DownloadError):
    """A fetched file's sha256 or size differs from the manifest's."""


class DockerError(BuilderError):
    """The Docker engine or the image build failed."""


class SmokeTestFailed(BuilderError):
    """The built image did not pass its smoke test; nothing was pushed."""


class RegistryError(BuilderError):
    """The registry refused or failed a request, or a version would be overwritten."""


class DeployError(BuilderError):
    """A deployment target refused or did not become healthy."""


class Unreachable(BuilderError):
    """A service (the Hub, a registry, RunPod, the Docker engine) could not be connected to.

    Bad input from the world rather than a failed build: the message names what was tried and
    which setting decides it (see builder/reach.py)."""


_BY_NAME: dict[str, type[BuilderError]] = {
    cls.__name__: cls
    for cls in (BuilderError, InputError, ManifestError, ConfigError, DownloadError, ChecksumMismatch,
                DockerError, SmokeTestFailed, RegistryError, DeployError, Unreachable)
}


def from_marker(line: str) -> BuilderError | None:
    """The error a build log line carries, if it is a marker line."""
    match = _MARKER.match(line)
    if match is None:
        return None
    cls = _BY_NAME.get(match.group(1), BuilderError)
    return cls(match.group(2).strip())
