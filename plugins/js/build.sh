#!/usr/bin/env bash
# Builds the JavaScript and TypeScript policy plugins (the examples and the test plugins) into
# components with jco and its QuickJS backend (componentize-qjs), and the TypeScript compiler,
# all pinned in plugins/js/package.json and package-lock.json, installed once from npm into
# ~/.cache/gantry-ci. Offline once installed.
#
#   bash plugins/js/build.sh [OUT]    # OUT defaults to target/plugins-js
#
# Each plugin is a folder with an `app.js` or `app.ts` exporting `balancers` (the balancer
# world), `affinities` (the affinity world) or `healthChecks` (the health world). TypeScript is
# type-checked against gantry-plugin.d.ts and compiled by `tsc -p plugins/js` first. A plugin is
# built again only when its folder, the SDK or the contract changed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
# OUT as given (relative to where the script was called from), before moving to the repository.
OUT=$(realpath -m "${1:-$repo/target/plugins-js}")
cd "$repo"
# shellcheck source=bench/lib.sh
source bench/lib.sh

CONTRACT=$PWD/plugins-wit/0.3.0
install_missing node:nodejs npm:npm
# jco's command line (commander 14, rolldown) needs Node.js 20 or later.
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "plugins/js/build.sh: jco needs Node.js 20 or later; this machine has $(node --version)" >&2
  exit 1
fi
# The tool chain, once per lock file.
tools=${XDG_CACHE_HOME:-$HOME/.cache}/gantry-ci/js-$(sha256sum plugins/js/package-lock.json | cut -c1-16)
if [ ! -x "$tools/node_modules/.bin/jco" ]; then
  mkdir -p "$tools"
  cp plugins/js/package.json plugins/js/package-lock.json "$tools/"
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
mkdir -p "$OUT"

# TypeScript plugins: checked, then compiled to JavaScript beside a copy of the SDK, keeping
# their relative imports.
typescript=$OUT/.typescript
sdk=(plugins/js/gantry-plugin.js plugins/js/gantry-plugin.d.ts plugins/js/tsconfig.json)
compiled=0
compile_typescript() {
  if [ "$compiled" = 0 ]; then
    rm -rf "$typescript"
    "$tools/node_modules/.bin/tsc" -p plugins/js --noEmit false --outDir "$typescript" >&2
    cp plugins/js/gantry-plugin.js "$typescript/"
    compiled=1
  fi
}

for app in plugins/js/examples/*/app.[jt]s plugins/js/testing/*/app.[jt]s; do
  folder=$(dirname "$app")
  name=$(basename "$folder")
  if grep -q '^export const balancers = ' "$app"; then world=balancer
  elif grep -q '^export const affinities = ' "$app"; then world=affinity
  elif grep -q '^export const healthChecks = ' "$app"; then world=health
  else
    echo "$app exports none of balancers, affinities, healthChecks" >&2
    exit 1
  fi
  wasm=$OUT/$name.wasm
  if up_to_date "$wasm" "$folder" "${sdk[@]}" "$CONTRACT"; then
    continue
  fi
  echo "building the JavaScript plugin $name ($world)" >&2
  root=$PWD/plugins/js
  source=$PWD/$app
  if [ "${app##*.}" = ts ]; then
    compile_typescript
    root=$typescript
    source=$typescript/${folder#plugins/js/}/app.js
  fi
  # QuickJS (1.6 MB components) rather than StarlingMonkey, whose components leaked memory on
  # every call in our runs; --backend-qjs-disable-async: the sandbox serves synchronous calls
  # only; --backend-qjs-stub-wasi: the plugin imports only Gantry's host interface. TypeScript
  # goes in compiled: jco's own TypeScript path cannot read the contract (1.35.0 gives its WIT
  # reader no file system: "failed to get path metadata").
  "$tools/node_modules/.bin/jco" componentize "$source" --cwd "$root" \
    --wit "$CONTRACT" -n "$world" --backend qjs --backend-qjs-disable-async \
    --backend-qjs-stub-wasi -o "$wasm.tmp" >&2
  mv "$wasm.tmp" "$wasm"
done
