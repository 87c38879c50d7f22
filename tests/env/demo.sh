#!/usr/bin/env bash
# `make demo`: set up what is missing, publish the tiny demo model to a loopback Hub, then
# build, smoke-test and push its image with the real builder command, and print how to run it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
"$here/up.sh" --no-audio  # the demo builds on the CPU base only

state="$root/.cache/demo"
HUB_PORT=${HUB_PORT:-8960}
# A namespace per run: versions are immutable, so a second `make demo` after a code change would
# (rightly) be refused under the same tag. The registry stores the shared layers once.
REGISTRY=${REGISTRY:-127.0.0.1:5000/run-$(date -u +%Y%m%d-%H%M%S)}
PY="$root/.venv/bin/python"
mkdir -p "$state"

if [ ! -f "$state/tiny-sd/model_index.json" ]; then
  echo "demo: making the tiny random-weight pipeline (tests/fixtures/tiny_models.py)" >&2
  rm -rf "$state/tiny-sd"
  "$PY" -m tests.fixtures.tiny_models tiny-sd "$state/tiny-sd" 2>"$state/make-model.log" \
    || { cat "$state/make-model.log" >&2; exit 1; }
fi

echo "demo: serving it from a loopback Hub on 127.0.0.1:$HUB_PORT" >&2
rm -f "$state/hub.url"
"$PY" -m tests.localhub --root "$state/hub" --port "$HUB_PORT" --publish "builder-demo/tiny-sd=$state/tiny-sd" \
  --ready-file "$state/hub.url" >"$state/hub.log" 2>&1 &
hub_pid=$!
trap 'kill $hub_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do [ -s "$state/hub.url" ] && break; kill -0 $hub_pid 2>/dev/null || break; sleep 0.2; done
[ -s "$state/hub.url" ] || { cat "$state/hub.log" >&2; echo "demo: the loopback Hub did not start" >&2; exit 1; }
grep -q "builder-demo/tiny-sd@$(grep -m1 'revision:' manifests/demo.yaml | awk '{print $2}')" "$state/hub.log" || {
  echo "demo: the tiny model's files differ from what manifests/demo.yaml pins (package versions changed?): see tests/test_tiny_models.py" >&2
  exit 1
}

# The loopback Hub is the one approved mirror for the demo (the project's own configuration,
# [tool.builder] in pyproject.toml, approves only huggingface.co).
cat >"$state/builder.yaml" <<YML
mirrors:
  - {name: localhub, url: $(cat "$state/hub.url")}
YML
BUILDER_CONFIG="$state/builder.yaml" "$PY" -m builder build demo --registry "$REGISTRY"
