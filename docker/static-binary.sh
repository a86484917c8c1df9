#!/usr/bin/env bash
# Builds the `gantry` that the container image and the VM appliance ship: static (musl, ring),
# stripped, at target/gantry-static. One binary for both, so that what the container test
# and the appliance's boot test run is the same program.
#
#   bash docker/static-binary.sh                  # PROFILE=dist (fat LTO: ~10 min on 2 cores)
#   PROFILE=release bash docker/static-binary.sh  # quicker, a little larger and slower
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

PROFILE=${PROFILE:-dist}
install_missing musl-gcc:musl-tools strip:binutils
bash .ci/setup
rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl
# C dependencies compiled for musl; Rust links the static-pie itself (musl-gcc as the linker
# would ask for musl's dynamic loader, which neither image has).
CC_x86_64_unknown_linux_musl=musl-gcc \
  cargo build --profile "$PROFILE" --locked --target x86_64-unknown-linux-musl \
  -p gantry --bin gantry >&2
strip --remove-section=.comment -o target/gantry-static \
  "target/x86_64-unknown-linux-musl/$PROFILE/gantry"
