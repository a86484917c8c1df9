#!/usr/bin/env bash
# Lays out the image's file system in DEST: the one definition of what the container image
# holds, used by both stages of docker/Containerfile (inside the build container, and on the
# host by docker/build.sh): the static `gantry`, a CA bundle, /etc/passwd and /etc/group for
# its non-root user (65532), the default configuration, /var/cache/gantry (the user's, 0700)
# for compiled plugins, and /tmp. Run as root (it gives the cache to the user).
#
#   bash docker/rootfs.sh DEST GANTRY_BINARY CONFIG CA_BUNDLE
set -euo pipefail
dest=$1 binary=$2 config=$3 ca=$4
user=65532

install -d -m 0755 "$dest" "$dest/etc" "$dest/etc/gantry" "$dest/etc/ssl" "$dest/etc/ssl/certs" \
  "$dest/var" "$dest/var/cache"
install -d -m 1777 "$dest/tmp"
install -d -m 0700 -o "$user" -g "$user" "$dest/var/cache/gantry"
install -m 0755 "$binary" "$dest/gantry"
install -m 0644 "$config" "$dest/etc/gantry/gantry.yaml"
install -m 0644 "$ca" "$dest/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/var/cache/gantry:/sbin/nologin\n' \
  "$user" "$user" > "$dest/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$user" > "$dest/etc/group"
chmod 0644 "$dest/etc/passwd" "$dest/etc/group"
