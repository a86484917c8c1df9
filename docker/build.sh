#!/usr/bin/env bash
# Builds Gantry's container image with buildah from docker/Containerfile, offline and without
# a daemon: the static binary (musl, ring, stripped; docker/static-binary.sh) built here, the
# file system laid out by docker/rootfs.sh, and the Containerfile's `rootfs-host` stage taking
# it (GANTRY_BINARY=host). Reproducible: every timestamp is the last commit's, and the image is
# built twice from the same inputs, which must give the same digest. Writes an OCI archive and
# prints the image's digest and size.
#
#   bash docker/build.sh                  # PROFILE=dist (fat LTO: ~10 min on 2 cores)
#   PROFILE=release bash docker/build.sh  # quicker, a little larger and slower
#   podman load -i target/gantry-oci.tar  # or: docker load -i target/gantry-oci.tar
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

OUT=${OUT:-target/gantry-oci.tar}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
TAG=${TAG:-gantry:$VERSION}
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
REVISION=$(git rev-parse HEAD)

install_missing buildah:buildah
[ -f /etc/ssl/certs/ca-certificates.crt ] || install_packages ca-certificates
[ "$(id -u)" -eq 0 ] || { echo "docker/build.sh: run as root (the image's files have owners)" >&2; exit 1; }
bash docker/static-binary.sh

# The build context: the image's file system as one archive, every entry dated EPOCH.
mkdir -p "$work/context"
bash docker/rootfs.sh "$work/rootfs" target/gantry-static docker/gantry.yaml \
  /etc/ssl/certs/ca-certificates.crt
tar --sort=name --mtime="@$EPOCH" --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$work/rootfs" -cf "$work/context/rootfs.tar" .

# buildah as a build tool, not a service: its own storage under $work, gone afterwards; vfs
# and chroot need no kernel features beyond what any build machine has.
build() {
  local n=$1
  local storage=(--root "$work/storage-$n" --runroot "$work/run-$n" --storage-driver vfs)
  buildah "${storage[@]}" build --quiet --isolation chroot --timestamp "$EPOCH" \
    --build-arg GANTRY_BINARY=host --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
    -f docker/Containerfile -t "$TAG" "$work/context" >/dev/null
  buildah "${storage[@]}" push --quiet --digestfile "$work/digest-$n" "$TAG" \
    "oci-archive:$work/image-$n.tar:$TAG"
}
build 1
build 2
digest=$(cat "$work/digest-1")
if [ "$digest" != "$(cat "$work/digest-2")" ]; then
  echo "docker/build.sh: two builds from the same inputs gave $digest and $(cat "$work/digest-2")" >&2
  exit 1
fi
mv "$work/image-1.tar" "$OUT"
echo "$OUT: $TAG, $digest (two builds, one digest), $(stat -c %s "$OUT") bytes"
