"""Docker plumbing that needs no engine: which CLI builds, how a failed build is summarised."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.docker import _failure_summary, detect_build_tool
from builder.errors import ChecksumMismatch, DockerError, from_marker


def fake_cli(directory: Path, version: str, buildx: bool | str) -> Path:
    """A docker CLI stand-in. buildx: True, False, or "config": the plugin is there only when
    $DOCKER_CONFIG/cli-plugins/docker-buildx exists, as the real CLI looks for it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "docker"
    if buildx == "config":
        plugin = '[ -x "$DOCKER_CONFIG/cli-plugins/docker-buildx" ] && { echo v0.13; exit 0; }; echo no buildx >&2; exit 1'
    else:
        plugin = "echo v0.12; exit 0" if buildx else "echo no buildx >&2; exit 1"
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "Docker version {version}, build abc"; exit 0; fi\n'
        f'if [ "$1" = "buildx" ]; then {plugin}; fi\n'
        "exit 1\n"
    )
    path.chmod(0o755)
    return path


def test_buildx_is_preferred_where_the_plugin_exists(tmp_path: Path) -> None:
    cli = fake_cli(tmp_path / "a", "28.2.2", buildx=True)
    tool = detect_build_tool({"PATH": str(cli.parent)}, fallbacks=())
    assert tool.argv == (str(cli), "buildx", "build", "--load") and tool.buildx
    # No default provenance attestation: on the containerd store it would give every build a new id.
    assert tool.env == {"BUILDX_NO_DEFAULT_ATTESTATIONS": "1"}


def test_the_plugin_is_looked_for_in_the_docker_config_of_the_detection(tmp_path: Path, monkeypatch) -> None:
    """A CI runner's buildx often lives in $DOCKER_CONFIG/cli-plugins; the probe must see the
    DOCKER_CONFIG it was given, and the build must keep it."""
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    cli = fake_cli(tmp_path / "new", "28.2.2", buildx="config")
    old = fake_cli(tmp_path / "old", "20.10.24", buildx=False)
    config = tmp_path / "docker-config"
    (config / "cli-plugins").mkdir(parents=True)
    plugin = config / "cli-plugins" / "docker-buildx"
    plugin.write_text("#!/bin/sh\n")
    plugin.chmod(0o755)
    tool = detect_build_tool({"PATH": str(cli.parent), "DOCKER_CONFIG": str(config)}, fallbacks=(str(old),))
    assert tool.argv == (str(cli), "buildx", "build", "--load")
    assert tool.env["DOCKER_CONFIG"] == str(config) and f"DOCKER_CONFIG={config}" in tool.describe()
    without = detect_build_tool({"PATH": str(cli.parent)}, fallbacks=(str(old),))
    assert without.argv == (str(old), "build") and "DOCKER_CONFIG" not in without.env


def test_the_build_cli_is_pointed_at_the_engine_of_the_sdk_client() -> None:
    """The SDK keeps only http+docker://localhost for a unix socket; the CLI must be told the path."""
    import docker

    from builder.docker import Docker, engine_host

    client = docker.DockerClient(base_url="unix:///run/some-engine/docker.sock", version="1.41")
    assert engine_host(client) == "unix:///run/some-engine/docker.sock"
    assert Docker(client).docker_host == "unix:///run/some-engine/docker.sock"
    assert Docker(client, docker_host="unix:///other.sock").docker_host == "unix:///other.sock"
    tcp = docker.DockerClient(base_url="tcp://127.0.0.1:2375", version="1.41")
    assert engine_host(tcp) is None  # the environment names a TCP engine already


def test_a_new_client_without_buildx_is_skipped_for_an_old_one(tmp_path: Path) -> None:
    new = fake_cli(tmp_path / "new", "28.2.2", buildx=False)
    old = fake_cli(tmp_path / "old", "20.10.24+dfsg1", buildx=False)
    tool = detect_build_tool({"PATH": str(new.parent)}, fallbacks=(str(old),))
    assert tool.argv == (str(old), "build") and tool.env == {"DOCKER_BUILDKIT": "1"}


def test_an_explicit_cli_comes_first(tmp_path: Path) -> None:
    chosen = fake_cli(tmp_path / "chosen", "20.10.5", buildx=False)
    other = fake_cli(tmp_path / "other", "19.03.1", buildx=False)
    tool = detect_build_tool({"PATH": str(other.parent), "BUILDER_DOCKER_CLI": str(chosen)}, fallbacks=())
    assert tool.argv[0] == str(chosen)


def test_no_capable_client_says_what_to_install(tmp_path: Path) -> None:
    new = fake_cli(tmp_path / "new", "28.2.2", buildx=False)
    with pytest.raises(DockerError, match="install the docker buildx plugin"):
        detect_build_tool({"PATH": str(new.parent)}, fallbacks=())
    with pytest.raises(DockerError, match="no docker CLI found"):
        detect_build_tool({"PATH": str(tmp_path / "empty")}, fallbacks=())


def test_failure_summary_picks_the_error_and_adds_the_proxy_hint() -> None:
    log = [
        "#6 [stage-1 3/9] RUN python3 -m pip install nosuchpkg==1",
        "#6 2.1 WARNING: Retrying ... CERTIFICATE_VERIFY_FAILED",
        "#6 7.9 ERROR: Could not find a version that satisfies the requirement nosuchpkg==1",
        "#6 ERROR: executor failed running",
    ]
    summary = _failure_summary(log)
    assert summary.startswith("ERROR: Could not find a version that satisfies the requirement nosuchpkg==1")
    assert "pass --ca-bundle" in summary


def test_markers_are_recognised_only_at_the_start_of_output() -> None:
    error = from_marker("#12 0.693 ::builder-error::ChecksumMismatch::demo: a.bin: sha256 mismatch")
    assert isinstance(error, ChecksumMismatch) and str(error) == "demo: a.bin: sha256 mismatch"
    assert from_marker("#6 [stage 2/5] RUN python3 -c '... ::builder-error::InputError::x'") is None
    assert str(from_marker("::builder-error::Unknown::kept")) == "kept"


def test_a_marker_is_one_line_whatever_the_message() -> None:
    assert ChecksumMismatch("a\nb  c").marker() == "::builder-error::ChecksumMismatch::a b c"


def test_the_build_network_follows_the_engine_unless_asked() -> None:
    from builder.docker import network_for

    assert network_for("auto", has_bridge=False) == "host"  # dockerd --bridge=none: the default reaches nothing
    assert network_for("auto", has_bridge=True) == "default"
    assert network_for("host", has_bridge=True) == "host" and network_for("none", has_bridge=False) == "none"
