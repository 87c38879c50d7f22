#!/usr/bin/env bash
# What tests/env/up.sh would do on a Debian 13 host, checked as far as a Debian 13 root allows
# (issue 24). Not part of `make test`: run it by hand after changing up.sh's package steps.
#   1. up.sh itself in a fresh trixie root, up to its apt step, with installs simulated
#      (`apt-get install --simulate`): the package names it picks there, and that apt resolves them;
#   2. its Python choice there (Debian 13 has 3.13 and no 3.11);
#   3. the local base image's debootstrap of bookworm, run by trixie's debootstrap;
#   4. tests/env/postgres.sh with trixie's PostgreSQL (17), started and stopped.
# The root is a throwaway under /var/tmp, removed at the end (its mounts first). Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/../.." && pwd)
MIRROR=${ENGINE26_MIRROR:-http://deb.debian.org/debian}
R=$(mktemp -d /var/tmp/debian13-check-XXXXXX)
chmod 755 "$R"  # the root directory of a system: every user passes through it
log() { printf 'debian13-check: %s\n' "$*" >&2; }

unmount_all() {
  local point
  for _ in 1 2 3 4 5; do
    mapfile -t points < <(awk -v p="$R" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/mounts | tac)
    ((${#points[@]})) || return 0
    for point in "${points[@]}"; do umount "$point" 2>/dev/null || true; done
  done
  return 1
}
finish() {
  # The postgres server started in step 4, if it still runs: by its pidfile, never by name.
  local pid
  pid=$(head -1 "$R"/srv/builder/.cache/env/postgres/data/postmaster.pid 2>/dev/null || true)
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && sleep 2
  if unmount_all; then rm -rf "$R"; else log "mounts remain under $R: not deleted"; fi
}
trap finish EXIT

log "debootstrap trixie (minbase) into $R"
debootstrap --variant=minbase trixie "$R" "$MIRROR" >"$R.debootstrap.log" 2>&1 || { tail "$R.debootstrap.log"; exit 1; }
rm -f "$R.debootstrap.log"
mount --bind "$R" "$R" && mount --make-private "$R"
for dir in proc dev sys; do mount --rbind "/$dir" "$R/$dir" && mount --make-rslave "$R/$dir"; done
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d" && chmod 755 "$R/usr/sbin/policy-rc.d"
mkdir -p "$R/srv/builder"
git -C "$checkout" ls-files -z | (cd "$checkout" && tar --null -T - -cf -) | tar -C "$R/srv/builder" -xf -
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
in_root apt-get update -qq

log "1. up.sh's package step on $(. "$R/etc/os-release" && echo "$PRETTY_NAME")"
mkdir -p "$R/opt/simulate"
cat >"$R/opt/simulate/apt-get" <<'SH'
#!/bin/sh
# up.sh's apt-get, with installs only simulated; stops up.sh right after (exit 99).
[ "$1" = install ] || exec /usr/bin/apt-get "$@"
shift
printf 'asked: %s\n' "$*"
/usr/bin/apt-get install --simulate "$@" | grep -E '^(Inst|E:)' | sed 's/^Inst \([^ ]*\) (\([^ ]*\).*/Inst \1 \2/'
exit 99
SH
chmod 755 "$R/opt/simulate/apt-get"
set +e
out=$(chroot "$R" /usr/bin/env -i PATH=/opt/simulate:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /srv/builder/tests/env/up.sh 2>&1)
set -e
printf '%s\n' "$out" | grep -E '^(asked|E:|env:)' >&2
printf '%s\n' "$out" | grep -E '^Inst (docker\.io|docker-cli|docker-buildx|docker-registry|containerd|runc|debootstrap|skopeo|curl|postgresql-[0-9]+|python3\.[0-9]+-venv) ' >&2
for package in docker.io docker-cli docker-buildx docker-registry debootstrap skopeo postgresql python3-venv; do
  printf '%s\n' "$out" | grep -q "^asked: .*\b$package\b" || { log "up.sh did not ask for $package"; exit 1; }
done
! printf '%s\n' "$out" | grep -q '^E:' || { log "apt cannot install what up.sh asks for"; exit 1; }

log "2. up.sh's Python choice (after python3-venv is installed)"
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
sed -n '/^find_python() {/,/^}/p' "$here/up.sh" >"$R/opt/find_python.sh"
python=$(in_root bash -c '. /opt/find_python.sh; find_python')
log "   chosen: $python ($(in_root "$python" --version))"
in_root "$python" -m venv /opt/venv-check && log "   $python -m venv works"

log "3. the base image's debootstrap of bookworm, by trixie's debootstrap (about a minute)"
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
in_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm /opt/bookworm "$MIRROR" \
  >"$R/opt/debootstrap.log" 2>&1 || { tail -20 "$R/opt/debootstrap.log" >&2; exit 1; }
log "   bookworm root made: $(in_root chroot /opt/bookworm python3 --version)"
unmount_all_inner() { awk -v p="$R/opt/bookworm" 'index($2, p) == 1 { print $2 }' /proc/mounts | tac | xargs -r -n1 umount; }
unmount_all_inner

log "4. postgres.sh with Debian 13's PostgreSQL"
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
in_root env BUILDER_TEST_POSTGRES_PORT="$port" /srv/builder/tests/env/postgres.sh
bin=$(in_root bash -c 'ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1')
log "   $bin: $(in_root "$bin/pg_isready" -h 127.0.0.1 -p "$port")"
in_root runuser -u postgres -- "$bin/pg_ctl" -D /srv/builder/.cache/env/postgres/data stop -m fast >/dev/null
log "all checks passed"
