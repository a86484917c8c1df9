#!/usr/bin/env bash
# Builds the Gantry VM appliance: a UEFI-bootable qcow2 disk (target/gantry-appliance.qcow2)
# made without root loop devices or mounts. Debian 12 from mmdebstrap with the cloud kernel,
# systemd-networkd, cloud-init and OpenSSH; Gantry from its Debian package (deploy/debian:
# the static binary of the container image, its hardened unit, user and conffile); BIRD and
# keepalived wiring; load-balancer sysctls. The root file system is written by `mke2fs -d`,
# the EFI system partition (systemd-boot, the kernel and its initramfs) by mtools, and both
# are placed in a GPT disk by sfdisk and dd. Needs root (mmdebstrap's root mode) and the
# Debian mirror.
#
#   bash appliance/build.sh                   # PROFILE=dist (fat LTO: ~10 min on 2 cores)
#   PROFILE=release bash appliance/build.sh   # quicker to build
#   bash appliance/test.sh                    # boot it under QEMU and proxy through it
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

OUT=${OUT:-target/gantry-appliance.qcow2}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT_SIZE_MIB=${ROOT_SIZE_MIB:-2048}   # cloud-init grows it to the disk's size at first boot
ESP_SIZE_MIB=64
# Fixed identities: the image is the same from build to build; cloud-init gives each VM its
# own machine id, host keys and hostname at first boot.
ROOT_UUID=6a2f3c1e-9b1d-4a57-8f0e-2d7c5b8e4a10
ESP_SERIAL=4741544e   # "GATN"

install_missing mmdebstrap:mmdebstrap mke2fs:e2fsprogs sfdisk:fdisk mcopy:mtools \
  mkfs.vfat:dosfstools qemu-img:qemu-utils
[ -f /usr/lib/systemd/boot/efi/systemd-bootx64.efi ] || install_packages systemd-boot-efi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# The package of this checkout (built here, quick once the binary is), unless DEB names one.
if [ -z "${DEB:-}" ]; then
  DEB=target/gantry_${VERSION}_amd64.deb
  bash deploy/debian/build.sh >&2
fi

root="$work/root"
# Debian without documentation, manuals or translations: an appliance is read by its logs.
mmdebstrap --variant=minbase --mode=root \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --include=systemd,systemd-sysv,udev,dbus,systemd-resolved,systemd-timesyncd \
  --include=linux-image-cloud-amd64,initramfs-tools,e2fsprogs \
  --include=cloud-init,cloud-guest-utils,openssh-server,sudo,ca-certificates,iproute2,curl \
  --include=bird2,keepalived,nftables \
  "$SUITE" "$root" "$MIRROR" >&2

# Gantry itself: its Debian package (deploy/debian), installed as on any Debian host, so the
# appliance and the package cannot differ: binary, unit, user, run-time folders, conffile.
cp "$DEB" "$root/tmp/gantry.deb"
chroot "$root" dpkg -i /tmp/gantry.deb >&2
rm "$root/tmp/gantry.deb"
# The appliance's own: its configuration (the admin endpoint on every address, behind a token
# made at first boot), and the unit ordered after cloud-init.
install -m 0644 appliance/files/gantry.yaml "$root/etc/gantry/gantry.yaml"
install -D -m 0644 appliance/files/after-cloud-init.conf \
  "$root/usr/lib/systemd/system/gantry.service.d/appliance.conf"
install -m 0644 appliance/files/gantry-admin-token.service \
  "$root/usr/lib/systemd/system/gantry-admin-token.service"
# The machine as a load balancer.
install -m 0644 appliance/files/sysctl.conf "$root/usr/lib/sysctl.d/90-gantry.conf"
install -m 0644 appliance/files/conntrack.conf "$root/etc/modprobe.d/gantry-conntrack.conf"
install -m 0644 appliance/files/dhcp.network "$root/etc/systemd/network/90-dhcp.network"
install -m 0644 appliance/files/cloud.cfg "$root/etc/cloud/cloud.cfg.d/90-gantry.cfg"
# Announcing the addresses through BIRD (docs/routing.md), and the second chance.
install -m 0644 appliance/files/bird.conf "$root/etc/bird/bird.conf"
install -m 0644 appliance/files/routing.conf \
  "$root/usr/lib/systemd/system/gantry.service.d/routing.conf"
install -D -m 0755 appliance/files/gantry-second-chance "$root/usr/lib/gantry/gantry-second-chance"
install -m 0644 appliance/files/gantry-second-chance.service \
  "$root/usr/lib/systemd/system/gantry-second-chance.service"
install -m 0644 appliance/files/gantry-keepalived-reload.path \
  appliance/files/gantry-keepalived-reload.service "$root/usr/lib/systemd/system/"
chroot "$root" systemctl enable gantry.service systemd-networkd.service bird.service \
  gantry-second-chance.service gantry-keepalived-reload.path \
  systemd-networkd-wait-online.service systemd-resolved.service systemd-timesyncd.service >&2
# Identity made at first boot; a persistent journal; the root file system by its UUID.
echo gantry > "$root/etc/hostname"
: > "$root/etc/machine-id"
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/var/log/journal"
echo "UUID=$ROOT_UUID / ext4 defaults,errors=remount-ro 0 1" > "$root/etc/fstab"

# The EFI system partition: systemd-boot starting the one kernel, its console on the serial
# port as well (where clouds and `virsh console` read it).
kernel=$(find "$root/boot" -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd="$root/boot/initrd.img-${kernel##*/vmlinuz-}"
esp="$work/esp.img"
mkfs.vfat -C -F 32 -i "$ESP_SERIAL" -n ESP "$esp" $((ESP_SIZE_MIB * 1024)) >&2
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$esp" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$kernel" ::/vmlinuz
mcopy -i "$esp" "$initrd" ::/initrd.img
printf 'default gantry.conf\ntimeout 0\n' > "$work/loader.conf"
cat > "$work/gantry.conf" <<ENTRY
title Gantry load balancer
linux /vmlinuz
initrd /initrd.img
options root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200n8
ENTRY
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/gantry.conf" ::/loader/entries/gantry.conf

# The root file system, written from the directory: no loop device, no mount.
rootfs="$work/root.img"
mke2fs -q -t ext4 -L gantry-root -U "$ROOT_UUID" -E root_owner=0:0 -d "$root" \
  "$rootfs" "${ROOT_SIZE_MIB}M" >&2

# One GPT disk: the ESP at 1 MiB, the root after it, 1 MiB at the end for the backup table.
disk="$work/disk.raw"
esp_start=$((1 * 2048)); root_start=$(((1 + ESP_SIZE_MIB) * 2048))
truncate -s $(((1 + ESP_SIZE_MIB + ROOT_SIZE_MIB + 1) * 1024 * 1024)) "$disk"
sfdisk --quiet "$disk" <<TABLE
label: gpt
unit: sectors
start=$esp_start, size=$((ESP_SIZE_MIB * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="ESP"
start=$root_start, size=$((ROOT_SIZE_MIB * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="gantry-root"
TABLE
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$rootfs" of="$disk" bs=1M seek=$((1 + ESP_SIZE_MIB)) conv=notrunc,sparse status=none
qemu-img convert -f raw -O qcow2 -c "$disk" "$OUT"
echo "$OUT: $(du -m "$OUT" | cut -f1) MiB (qcow2, compressed), $(qemu-img info --output=json "$OUT" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"] >> 20)') MiB disk"
