#!/usr/bin/env bash
# Builds Gantry's Debian package, target/gantry_VERSION_amd64.deb, with dpkg-deb from the files
# here and the static binary (docker/static-binary.sh): /usr/bin/gantry, its hardened unit with
# the handover as its upgrade, the gantry user (sysusers.d) and run-time folders (tmpfiles.d),
# /etc/gantry/gantry.yaml as a conffile (loopback admin, nothing served), a man page, the docs
# and example configurations. Reproducible: every date is the last commit's. Then lintian:
# no error and no warning (the overrides in lintian-overrides, each with its reason); its
# information tags are shown, not failed on (one, a "misspelling" in a dependency's strings
# inside the binary, comes and goes with the build).
#
#   bash deploy/debian/build.sh               # PROFILE=dist (fat LTO: ~10 min on 2 cores)
#   PROFILE=release bash deploy/debian/build.sh
#   apt install ./target/gantry_0.1.0_amd64.deb
#   DEB_VERSION=0.1.0+test1 GANTRY_STATIC=target/gantry-static bash deploy/debian/build.sh
#                                             # another version of the binary already built
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

# The package's version: the program's, unless DEB_VERSION says otherwise (a test that upgrades
# builds a second, newer package of the same binary).
VERSION=${DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
REVISION=$(git rev-parse HEAD)
OUT=${OUT:-target/gantry_${VERSION}_amd64.deb}
install_missing dpkg-deb:dpkg lintian:lintian
# The static binary: built here, unless GANTRY_STATIC names one already built.
if [ -z "${GANTRY_STATIC:-}" ]; then
  bash docker/static-binary.sh
  GANTRY_STATIC=target/gantry-static
fi

pkg=$work/gantry
here=deploy/debian
install -D -m 0755 "$GANTRY_STATIC" "$pkg/usr/bin/gantry"
install -D -m 0644 appliance/gantry.service "$pkg/lib/systemd/system/gantry.service"
install -D -m 0644 appliance/gantry.sysusers "$pkg/usr/lib/sysusers.d/gantry.conf"
install -D -m 0644 appliance/files/tmpfiles.conf "$pkg/usr/lib/tmpfiles.d/gantry.conf"
install -D -m 0644 "$here/gantry.yaml" "$pkg/etc/gantry/gantry.yaml"
install -d -m 0755 "$pkg/usr/share/man/man1" "$pkg/usr/share/doc/gantry/examples" \
  "$pkg/usr/share/lintian/overrides"
gzip -9n < "$here/gantry.1" > "$pkg/usr/share/man/man1/gantry.1.gz"
install -m 0644 "$here/copyright" "$pkg/usr/share/doc/gantry/copyright"
# A native package: its version is the program's, as `gantry --version` prints it.
sed -e "s/@VERSION@/$VERSION/" -e "s/@REVISION@/${REVISION:0:12}/" \
  -e "s/@DATE@/$(date -u -R -d "@$EPOCH")/" "$here/changelog" \
  | gzip -9n > "$pkg/usr/share/doc/gantry/changelog.gz"
for doc in README.md CHANGELOG.md docs/configuration.md docs/operations.md \
  docs/operator-guide.md docs/plugins.md docs/routing.md docs/kubernetes.md; do
  install -m 0644 "$doc" "$pkg/usr/share/doc/gantry/"
done
install -m 0644 config/examples/*.yaml "$pkg/usr/share/doc/gantry/examples/"
install -m 0644 "$here/lintian-overrides" "$pkg/usr/share/lintian/overrides/gantry"

install -d -m 0755 "$pkg/DEBIAN"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$pkg/DEBIAN/"
echo /etc/gantry/gantry.yaml > "$pkg/DEBIAN/conffiles"
size=$(du -s -k --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@SIZE@/$size/" "$here/control.in" > "$pkg/DEBIAN/control"
(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) \
  > "$pkg/DEBIAN/md5sums"
find "$pkg" -exec touch -h -d "@$EPOCH" {} +
SOURCE_DATE_EPOCH=$EPOCH dpkg-deb --root-owner-group -Zxz --build "$pkg" "$OUT" >/dev/null

lintian --fail-on error,warning --display-level '>=info' "$OUT"
echo "$OUT: $(stat -c %s "$OUT") bytes; lintian: no error, no warning (overrides: $here/lintian-overrides)"
