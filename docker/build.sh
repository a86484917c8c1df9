#!/usr/bin/env bash
# Builds Gantry's container image without a container daemon: a static binary (musl, ring,
# stripped; docker/static-binary.sh) built here, then docker/oci.py writes the image as an
# OCI archive, reproducibly (timestamps from the last commit). Prints the image's compressed
# size.
#
#   bash docker/build.sh                  # PROFILE=dist (fat LTO: ~10 min on 2 cores)
#   PROFILE=release bash docker/build.sh  # quicker, a little larger and slower
#   podman load -i target/gantry-oci.tar  # or: docker load -i target/gantry-oci.tar
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

OUT=${OUT:-target/gantry-oci.tar}
TAG=${TAG:-gantry:0.1.0}

install_missing python3:python3
[ -f /etc/ssl/certs/ca-certificates.crt ] || install_packages ca-certificates
bash docker/static-binary.sh
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)} \
  python3 docker/oci.py target/gantry-static docker/gantry.yaml "$OUT" "$TAG"
