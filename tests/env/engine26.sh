#!/usr/bin/env bash
# A second, current Docker engine beside the test engine: Debian 13's docker.io (26.x), its
# containerd and buildx plugin, run from a Debian 13 root of its own (those binaries need Debian
# 13's libraries). Each mode has its own socket, data root, exec root and pidfile, so both can run
# at once and beside the main engine:
#   classic     the classic image store (graph drivers, overlay2)
#   containerd  the containerd image store ("features": {"containerd-snapshotter": true})
#
#   engine26.sh prepare          make the Debian 13 root once (cached: .cache/env/engine26/root)
#   engine26.sh up MODE          prepare, mount, start MODE's dockerd; prints DOCKER_HOST=, DOCKER_CONFIG=
#                                (root's, holding the buildx plugin) and BUILDX_PLUGIN= lines
#   engine26.sh down [MODE]      stop MODE (all modes when none is named); unmount when none runs
#   engine26.sh status           which modes run, and the root's package versions
#
# ENGINE26_HOLDER=PID (up, down): a lease. `down` then stops the engine only when no other live
# process still holds one, so two test sessions can share a running engine.
# The root is made again only when it is missing or RECIPE below changes (its stamp records the
# package versions). Needs root (debootstrap, mount, dockerd), like tests/env/up.sh.
#
# Mounts follow what shared/MACHINE.md found: the root is bound onto itself and made private
# (else runc fails "error preparing rootfs: mount /, flags: 0x84000"), then /proc, /dev and /sys
# are bound recursively (the cgroup v1 controllers are mounts of their own: without them dockerd
# says "Devices cgroup isn't mounted"). They come off innermost first, walking /proc/mounts, and
# the root is never deleted while anything is mounted under it.
set -euo pipefail

SUITE=trixie
MIRROR=${ENGINE26_MIRROR:-http://deb.debian.org/debian}
PACKAGES="docker.io docker-cli docker-buildx containerd iptables ca-certificates curl"
RECIPE="1 $SUITE $MIRROR minbase $PACKAGES"  # bump the number when the steps in make_root change
MODES="classic containerd"

here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/../.." && pwd)
mkdir -p "$checkout/.cache/env/engine26"
# Physical paths: /proc/mounts names mounts by them, and a .cache that is a symlink must not hide one.
E=$(cd "$checkout/.cache/env/engine26" && pwd -P)
ROOT=$E/root
STAMP=$E/root.stamp
DATA=$E/data
# Sockets and exec roots: a short path (a unix socket's is limited to 107 bytes), one per checkout.
RUN=/run/builder-e26-$(printf %s "$E" | sha256sum | cut -c1-8)
log() { printf 'engine26: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

case "$E" in *[[:space:]]*) die "the checkout's path has white space ($E): /proc/mounts cannot be read back for it";; esac
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, mount, dockerd): run it as root, as tests/env/up.sh is"

# -- mounts --------------------------------------------------------------------------------------
mounts_under() {  # every mount point at or under $1, in the order /proc/mounts lists them
  awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/mounts
}
is_mounted() { awk -v p="$1" '$2 == p { found = 1 } END { exit !found }' /proc/mounts; }

mount_root() {
  if ! is_mounted "$ROOT"; then
    # A mount made before the root's own bind would stay hidden under it: start from nothing.
    [ -z "$(mounts_under "$ROOT")" ] || unmount_root
    mount --bind "$ROOT" "$ROOT"
    mount --make-private "$ROOT"
  fi
  for dir in proc dev sys; do
    if ! is_mounted "$ROOT/$dir"; then
      mount --rbind "/$dir" "$ROOT/$dir"
      mount --make-rslave "$ROOT/$dir"  # an unmount in here never reaches the host's own mounts
    fi
  done
  # The data roots and sockets keep the same paths inside and outside the root, so what dockerd
  # reports (DockerRootDir, the socket) is true on the host too.
  mkdir -p "$DATA" "$RUN" "$ROOT$DATA" "$ROOT$RUN"
  is_mounted "$ROOT$DATA" || mount --bind "$DATA" "$ROOT$DATA"
  is_mounted "$ROOT$RUN" || mount --bind "$RUN" "$ROOT$RUN"
}

unmount_root() {
  local pass point
  for pass in 1 2 3 4 5; do
    mapfile -t points < <(mounts_under "$ROOT" | tac)  # innermost (latest) first
    ((${#points[@]})) || return 0
    for point in "${points[@]}"; do
      umount "$point" 2>/dev/null || true
    done
  done
  mapfile -t points < <(mounts_under "$ROOT")
  ((${#points[@]} == 0)) || die "cannot unmount ${points[*]} (busy: see lsof or fuser); nothing was deleted"
}

processes_in_root() {  # pids whose root directory is the engine's root
  local link
  for link in /proc/[0-9]*/root; do
    [ "$(readlink "$link" 2>/dev/null)" = "$ROOT" ] && { link=${link#/proc/}; printf '%s\n' "${link%/root}"; }
  done
  return 0
}

# -- the root --------------------------------------------------------------------------------------
recipe_hash() { printf %s "$RECIPE" | sha256sum | cut -c1-16; }

root_is_current() {
  [ -f "$STAMP" ] && [ "$(head -1 "$STAMP")" = "recipe $(recipe_hash)" ] && [ -x "$ROOT/usr/sbin/dockerd" ] &&
    [ -x "$E/cli-plugins/docker-buildx" ]
}

make_root() {
  log "making a Debian $SUITE root with $PACKAGES in $ROOT (about 2 minutes, once)"
  stop_all
  unmount_root
  rm -rf "$ROOT" "$DATA" "$STAMP" "$E/cli-plugins"  # data of an older engine may not suit a new one
  debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$E/debootstrap.log" 2>&1 \
    || { tail -20 "$E/debootstrap.log" >&2; die "debootstrap $SUITE failed (log: $E/debootstrap.log)"; }
  # Packages' scripts must not try to start services inside the root.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  mount_root
  local ok=1
  {
    chroot "$ROOT" apt-get update -qq &&
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES
  } >"$E/apt.log" 2>&1 || ok=0
  unmount_root
  ((ok)) || { tail -30 "$E/apt.log" >&2; die "installing $PACKAGES in the root failed (log: $E/apt.log)"; }
  chroot "$ROOT" apt-get clean
  mkdir -p "$E/cli-plugins"
  cp "$ROOT/usr/libexec/docker/cli-plugins/docker-buildx" "$E/cli-plugins/docker-buildx"
  {
    printf 'recipe %s\n' "$(recipe_hash)"
    # shellcheck disable=SC2086 # one word per package
    chroot "$ROOT" dpkg-query -W -f '${Package} ${Version}\n' $PACKAGES runc
  } >"$STAMP.new"
  mv "$STAMP.new" "$STAMP"
  log "root ready: $(tail -n +2 "$STAMP" | tr '\n' ',' | sed 's/,$//; s/,/, /g')"
}

prepare() { root_is_current || make_root; }

# -- engines ---------------------------------------------------------------------------------------
sock() { printf '%s/%s/docker.sock' "$RUN" "$1"; }
pidfile() { printf '%s/%s/dockerd.pid' "$RUN" "$1"; }

running_pid() {  # the pid of MODE's dockerd when it runs from this root, else nothing
  local pid
  pid=$(cat "$(pidfile "$1")" 2>/dev/null) || return 0
  [ -n "$pid" ] && [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$ROOT" ] && printf '%s' "$pid"
  return 0
}

answers() { curl -fsS --max-time 2 --unix-socket "$(sock "$1")" http://engine/_ping >/dev/null 2>&1; }

socket_group() {  # the host's docker group, made if missing: the group that may use every engine
  getent group docker >/dev/null || groupadd --system docker
  getent group docker | cut -d: -f3
}

start_engine() {
  local mode=$1 snapshotter gid
  case "$mode" in classic) snapshotter=false ;; containerd) snapshotter=true ;; esac
  gid=$(socket_group)
  mkdir -p "$RUN/$mode" "$DATA/$mode" "$ROOT/etc/engine26"
  printf '{"features": {"containerd-snapshotter": %s}}\n' "$snapshotter" >"$ROOT/etc/engine26/$mode.json"
  log "starting the $mode engine (docker $(awk '$1 == "docker.io" { print $2 }' "$STAMP"), log: $E/$mode.log)"
  # The socket's group by number: the root's /etc/group does not know the host's groups, and
  # dockerd takes a number where no group of that name exists (moby daemon/listeners/group_unix.go).
  # Its own containerd (managed, under the exec root); no bridge and no iptables: loopback only,
  # builds and containers on the host network. fd 9 (the lock) is not handed to the daemon.
  setsid chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    dockerd --config-file "/etc/engine26/$mode.json" --data-root "$DATA/$mode" --exec-root "$RUN/$mode/exec" \
    --pidfile "$(pidfile "$mode")" --host "unix://$(sock "$mode")" --group "$gid" \
    --bridge=none --iptables=false --ip-masq=false >"$E/$mode.log" 2>&1 </dev/null 9>&- &
  local _
  for _ in $(seq 1 120); do
    answers "$mode" && return 0
    kill -0 $! 2>/dev/null || break
    sleep 0.5
  done
  tail -20 "$E/$mode.log" >&2
  die "the $mode engine did not start (log: $E/$mode.log)"
}

stop_engine() {
  local mode=$1 pid _
  pid=$(running_pid "$mode")
  if [ -n "$pid" ]; then
    log "stopping the $mode engine (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "the $mode engine did not stop in 30 s: killing it"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -rf "${RUN:?}/$mode/holders"
}

stop_all() {
  local mode pid
  for mode in $MODES; do stop_engine "$mode"; done
  # What a killed dockerd left behind (its containerd, shims), found by their root directory.
  for pid in $(processes_in_root); do kill -KILL "$pid" 2>/dev/null || true; done
}

live_holders() {  # leases of processes that still exist
  local file count=0
  for file in "$RUN/$1/holders"/*; do
    [ -e "$file" ] || continue
    if kill -0 "${file##*/}" 2>/dev/null; then count=$((count + 1)); else rm -f "$file"; fi
  done
  printf '%s' "$count"
}

check_mode() {
  case " $MODES " in *" $1 "*) ;; *) printf 'engine26: unknown mode %s (classic or containerd)\n' "$1" >&2; exit 2 ;; esac
}

up() {
  local mode=$1
  prepare
  mount_root
  if [ -z "$(running_pid "$mode")" ] || ! answers "$mode"; then
    stop_engine "$mode"
    start_engine "$mode"
  fi
  if [ -n "${ENGINE26_HOLDER:-}" ]; then
    mkdir -p "$RUN/$mode/holders" && : >"$RUN/$mode/holders/$ENGINE26_HOLDER"
  fi
  # A DOCKER_CONFIG for root with the plugin, for a person or a script:
  #   eval "$(tests/env/engine26.sh up classic | sed 's/^/export /')"; docker buildx ls
  mkdir -p "$E/docker-config/cli-plugins"
  cp -u "$E/cli-plugins/docker-buildx" "$E/docker-config/cli-plugins/docker-buildx"
  printf 'DOCKER_HOST=unix://%s\nDOCKER_CONFIG=%s\nBUILDX_PLUGIN=%s\n' "$(sock "$mode")" "$E/docker-config" \
    "$E/cli-plugins/docker-buildx"
}

down() {
  local modes=${1:-$MODES} mode left=0
  for mode in $modes; do
    [ -n "${ENGINE26_HOLDER:-}" ] && rm -f "$RUN/$mode/holders/$ENGINE26_HOLDER"
    if [ -n "${ENGINE26_HOLDER:-}" ] && [ "$(live_holders "$mode")" -gt 0 ]; then
      log "the $mode engine is still used by another process: left running"
      continue
    fi
    stop_engine "$mode"
  done
  for mode in $MODES; do [ -n "$(running_pid "$mode")" ] && left=1; done
  if ((left == 0)); then
    stop_all
    unmount_root
  fi
}

status() {
  local mode pid
  for mode in $MODES; do
    pid=$(running_pid "$mode")
    if [ -n "$pid" ]; then printf '%s: running (pid %s), DOCKER_HOST=unix://%s\n' "$mode" "$pid" "$(sock "$mode")"
    else printf '%s: stopped\n' "$mode"; fi
  done
  if [ -f "$STAMP" ]; then tail -n +2 "$STAMP"; else echo "root: not made yet (engine26.sh prepare)"; fi
}

command=${1:-}
exec 9>"$E/lock"
flock 9  # one change at a time: pytest sessions, up.sh and a person may all call this
case "$command" in
  prepare) prepare ;;
  up) [ $# = 2 ] || { echo "usage: engine26.sh up classic|containerd" >&2; exit 2; }; check_mode "$2"; up "$2" ;;
  down) [ $# -le 2 ] || { echo "usage: engine26.sh down [classic|containerd]" >&2; exit 2; }
        [ $# = 1 ] || check_mode "$2"; down "${2:-}" ;;
  status) status ;;
  *) echo "usage: engine26.sh prepare | up classic|containerd | down [classic|containerd] | status" >&2; exit 2 ;;
esac
