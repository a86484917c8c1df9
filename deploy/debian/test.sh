#!/usr/bin/env bash
# Installs the Debian package (deploy/debian/build.sh) on a bare Debian 12 made by mmdebstrap,
# in a chroot: the binary runs and names its build, the gantry user exists, the unit is
# enabled, /etc/gantry/gantry.yaml is a conffile that `gantry check` accepts; a reinstall
# keeps an operator's change to the conffile; then `apt purge` leaves nothing of the package
# behind (every file but apt's and dpkg's own bookkeeping is as before the install). Needs
# root and the Debian mirror.
#
#   bash deploy/debian/test.sh                # DEB=target/gantry_VERSION_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
DEB=${DEB:-target/gantry_${VERSION}_amd64.deb}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
install_missing mmdebstrap:mmdebstrap

root=$work/root
mmdebstrap --variant=minbase --mode=root --include=systemd,init-system-helpers \
  "$SUITE" "$root" "$MIRROR" >&2
cp "$DEB" "$root/tmp/gantry.deb"
inside() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
files() { (cd "$root" && find . -xdev ! -path './var/cache/apt*' ! -path './var/lib/apt*' \
  ! -path './var/lib/dpkg*' ! -path './var/log*' ! -path './tmp*' ! -path './var/cache/debconf*' \
  ! -path './var/cache/ldconfig*' | sort); }
files > "$work/before"

inside apt-get install -y -qq /tmp/gantry.deb >&2
inside gantry --version | grep -q "^gantry $VERSION (commit $(git rev-parse HEAD)," \
  || { echo "gantry --version does not name this build: $(inside gantry --version)"; exit 1; }
inside id gantry >/dev/null || { echo "no gantry user"; exit 1; }
[ "$(inside systemctl is-enabled gantry.service)" = enabled ] || { echo "the unit is not enabled"; exit 1; }
# shellcheck disable=SC2016  # dpkg-query's own ${field} syntax, not the shell's
inside dpkg-query -W -f='${Conffiles}' gantry | grep -q /etc/gantry/gantry.yaml \
  || { echo "/etc/gantry/gantry.yaml is not a conffile"; exit 1; }
inside gantry check --config /etc/gantry/gantry.yaml >&2

# An operator's change survives a reinstall (dpkg keeps a changed conffile).
echo "# changed by the operator" >> "$root/etc/gantry/gantry.yaml"
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall \
  -o Dpkg::Options::=--force-confold /tmp/gantry.deb >&2
grep -q "changed by the operator" "$root/etc/gantry/gantry.yaml" \
  || { echo "a reinstall lost the operator's change to gantry.yaml"; exit 1; }

inside apt-get purge -y -qq gantry >&2
files > "$work/after"
if ! diff "$work/before" "$work/after" >&2; then
  echo "apt purge left the files above behind (>) or took some away (<)"; exit 1
fi
! inside id gantry >/dev/null 2>&1 || { echo "purge left the gantry user"; exit 1; }
echo "deploy/debian/test.sh: $DEB installs on bare Debian ($SUITE), names its build, keeps an operator's gantry.yaml, and purges to nothing"
