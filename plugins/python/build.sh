#!/usr/bin/env bash
# Builds the Python policy plugins (the examples and the test plugins) into components with the
# pinned componentize-py, installed once from PyPI into ~/.cache/gantry-ci. Offline once
# installed.
#
#   bash plugins/python/build.sh [OUT]    # OUT defaults to target/plugins-python
#
# Each plugin is a folder with an `app.py`; its world (balancer, affinity or health) is read
# from the class app.py exports (`Balancers`, `Affinities` or `HealthChecks`). A plugin is
# built again only when its folder, the SDK (gantry_plugin) or the contract changed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
# OUT as given (relative to where the script was called from), before moving to the repository.
OUT=$(realpath -m "${1:-$repo/target/plugins-python}")
cd "$repo"
# shellcheck source=bench/lib.sh
source bench/lib.sh

# The contract the Python plugins are built against, and the tool, pinned.
CONTRACT=plugins-wit/0.3.0
COMPONENTIZE_PY=$(python_tool componentize-py componentize-py==0.25.1)
mkdir -p "$OUT"

for app in plugins/python/examples/*/app.py plugins/python/testing/*/app.py; do
  folder=$(dirname "$app")
  name=$(basename "$folder")
  if grep -q '^Balancers = ' "$app"; then world=balancer
  elif grep -q '^Affinities = ' "$app"; then world=affinity
  elif grep -q '^HealthChecks = ' "$app"; then world=health
  else
    echo "$app exports none of Balancers, Affinities, HealthChecks" >&2
    exit 1
  fi
  wasm=$OUT/$name.wasm
  if up_to_date "$wasm" "$folder" plugins/python/gantry_plugin "$CONTRACT"; then
    continue
  fi
  echo "building the Python plugin $name ($world)" >&2
  # --stub-wasi: the plugin imports only Gantry's host interface (the sandbox gives no WASI
  # files, sockets or clocks; a plugin that needs them would be refused at load).
  "$COMPONENTIZE_PY" -d "$CONTRACT" -w "$world" componentize --stub-wasi \
    -p plugins/python -p "$folder" app -o "$wasm.tmp" >&2
  mv "$wasm.tmp" "$wasm"
done
