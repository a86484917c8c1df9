#!/usr/bin/env bash
# Builds Gantry's container image without a container daemon: a static binary (musl, ring,
# stripped) built here, then docker/oci.py writes the image as an OCI archive, reproducibly
# (timestamps from the last commit). Prints the image's compressed size.
#
#   bash docker/build.sh                  # PROFILE=dist (fat LTO: ~10 min on 2 cores)
#   PROFILE=release bash docker/build.sh  # quicker, a little larger and slower
#   podman load -i target/gantry-oci.tar  # or: docker load -i target/gantry-oci.tar
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

PROFILE=${PROFILE:-dist}
OUT=${OUT:-target/gantry-oci.tar}
TAG=${TAG:-gantry:0.1.0}

install_missing musl-gcc:musl-tools python3:python3
[ -f /etc/ssl/certs/ca-certificates.crt ] || install_packages ca-certificates
bash .ci/setup
rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl
# C dependencies compiled for musl; Rust links the static-pie itself (musl-gcc as the linker
# would ask for musl's dynamic loader, which an empty image does not have).
CC_x86_64_unknown_linux_musl=musl-gcc \
  cargo build --profile "$PROFILE" --locked --target x86_64-unknown-linux-musl \
  -p lb-core --bin gantry >&2
strip -o target/gantry-static "target/x86_64-unknown-linux-musl/$PROFILE/gantry"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)} \
  python3 docker/oci.py target/gantry-static docker/gantry.yaml "$OUT" "$TAG"
