#!/usr/bin/env bash
# Boots the VM appliance (target/gantry-appliance.qcow2, from appliance/build.sh) under QEMU
# with UEFI firmware and a cloud-init NoCloud seed whose user-data configures one HTTP service
# to an nginx origin on this machine's loopback (the guest reaches it as 10.0.2.2 through
# QEMU's user-mode network; the appliance's ports come back on 127.0.0.1). Nobody logs in.
# Checks: a request through the appliance reaches the origin and is counted in /metrics; the
# admin token made on first boot (0640 root:gantry) guards /config and /metrics;
# gantry handed over to a new process on SIGUSR2 (systemd follows it) and runs as its own user;
# the image's sysctls are in force, nf_conntrack is not loaded, BIRD runs beside Gantry and the
# routing folders are made (keepalived's says "not serving"),
# no unit failed and the root file system grew to the disk; a newer Gantry package, installed
# with apt inside the VM while requests flow through it (a new connection each), upgrades it by
# the handover with no failed request; and the VM powers off cleanly (ACPI) when asked. Software emulation by default (under a minute here), KVM with ACCEL=kvm.
#
#   bash appliance/test.sh   # IMAGE=target/gantry-appliance.qcow2 BOOT_TIMEOUT=600 ACCEL=tcg|kvm
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
# The package version the appliance must have installed (deploy/debian).
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

IMAGE=${IMAGE:-target/gantry-appliance.qcow2}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-600}
OVMF=/usr/share/OVMF
install_missing qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mcopy:mtools \
  mkfs.vfat:dosfstools nginx:nginx-light curl:curl python3:python3
[ -f "$OVMF/OVMF_CODE_4M.fd" ] || install_packages ovmf
# Debian's qemu-system-x86 can replace a newer (backported) qemu-utils that was there before,
# taking qemu-img with it: check again once the rest is in.
install_missing qemu-img:qemu-utils

ORIGIN=$(free_port); HTTP=$(free_port); ADMIN=$(free_port); UPGRADE=$(free_port)
# A newer package of the binary the image holds (appliance/build.sh's), served to the VM (as
# 10.0.2.2:$UPGRADE) for the upgrade.
mkdir -p "$work/upgrade"
DEB_VERSION="$VERSION+upgrade1" OUT="$work/upgrade/gantry-new.deb" \
  GANTRY_STATIC=target/gantry-static bash deploy/debian/build.sh >&2
(cd "$work/upgrade" && exec python3 -m http.server --bind 127.0.0.1 "$UPGRADE" >/dev/null 2>&1) &
pids+=($!)
origin_nginx_conf "$ORIGIN" > "$work/nginx.conf"
mkdir -p "$work/nginx"
nginx -c "$work/nginx.conf" & pids+=($!)
wait_port "$ORIGIN"

# The NoCloud seed: a FAT volume labelled CIDATA with meta-data and user-data.
cat > "$work/meta-data" <<META
instance-id: gantry-test-$$
local-hostname: gantry-test
META
cat > "$work/user-data" <<USER
#cloud-config
write_files:
  - path: /etc/gantry/gantry.yaml
    permissions: "0644"
    content: |
      admin: { listen: "0.0.0.0:9901", token_file: /etc/gantry/admin-token }
      services:
        - name: web
          address: 0.0.0.0
          ports:
            - { name: http, port: 80, protocol: http, backends: ["10.0.2.2:$ORIGIN"] }
  # A load-balancer pool as local addresses, as docs/operator-guide.md shows.
  - path: /etc/systemd/network/10-gantry-pool.network
    content: |
      [Match]
      Name=lo
      [Route]
      Destination=203.0.113.0/28
      Type=local
runcmd:
  - [networkctl, reload]
  - - sh
    - -c
    - >-
      old=\$(systemctl show -p MainPID --value gantry);
      systemctl kill --kill-whom=main --signal=SIGUSR2 gantry;
      for i in \$(seq 1 60); do
      pid=\$(systemctl show -p MainPID --value gantry);
      [ "\$pid" != "\$old" ] && [ ! -e /proc/\$old ] && break; sleep 1; done;
      handover=\$([ "\$pid" != "\$old" ] && [ ! -e /proc/\$old ] && echo done || echo failed);
      echo "appliance-check:
      somaxconn=\$(sysctl -n net.core.somaxconn)
      nonlocal_bind=\$(sysctl -n net.ipv4.ip_nonlocal_bind)
      tw_reuse=\$(sysctl -n net.ipv4.tcp_tw_reuse)
      migrate_req=\$(sysctl -n net.ipv4.tcp_migrate_req)
      pool_routes=\$(ip -o route show table local type local 203.0.113.0/28 | wc -l)
      conntrack=\$(test -d /sys/module/nf_conntrack && echo loaded || echo absent)
      arp_ignore=\$(sysctl -n net.ipv4.conf.all.arp_ignore)
      bird=\$(systemctl is-active bird)
      routing_dir=\$(stat -c %U /run/gantry/bird)
      vrrp_ready=\$(cat /run/gantry/keepalived/ready)
      gantry=\$(systemctl is-active gantry)
      package=\$(dpkg-query -W -f=\\\${Status}/\\\${Version} gantry | tr ' ' _)
      handover=\$handover
      user=\$(stat -c %U /proc/\$pid)
      token_mode=\$(stat -c %a:%U:%G /etc/gantry/admin-token)
      admin_token=\$(cat /etc/gantry/admin-token)
      root_mib=\$(df -m --output=size / | tail -n 1 | tr -d ' ')
      failed_units=\$(systemctl list-units --state=failed --no-legend --plain | cut -d' ' -f1 | paste -sd, -)"
      > /dev/ttyS0;
      journalctl -u gantry -o cat --no-pager | tail -n 20 | sed 's/^/gantry-log: /' > /dev/ttyS0
  # The upgrade: once the host's load runs (it serves /go), a newer package of Gantry is
  # installed with apt while requests flow; its postinst hands the sockets over. The new
  # process may first compile its plugins (a binary other than the one that filled the cache,
  # under emulation: up to minutes), as the unit's TimeoutStartSec allows.
  - - sh
    - -c
    - >-
      for i in \$(seq 1 600); do curl -fsS -o /dev/null http://10.0.2.2:$UPGRADE/go && break; sleep 1; done;
      curl -fsS -o /tmp/gantry-new.deb http://10.0.2.2:$UPGRADE/gantry-new.deb;
      old=\$(systemctl show -p MainPID --value gantry);
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold /tmp/gantry-new.deb > /dev/ttyS0 2>&1;
      for i in \$(seq 1 300); do
      pid=\$(systemctl show -p MainPID --value gantry);
      [ "\$pid" != "\$old" ] && [ ! -e /proc/\$old ] && break; sleep 1; done;
      echo "appliance-upgrade:
      package=\$(dpkg-query -W -f=\\\${Status}/\\\${Version} gantry | tr ' ' _)
      handover=\$([ "\$pid" != "\$old" ] && [ ! -e /proc/\$old ] && echo done || echo failed)
      gantry=\$(systemctl is-active gantry)
      failed_units=\$(systemctl list-units --state=failed --no-legend --plain | cut -d' ' -f1 | paste -sd, -)"
      > /dev/ttyS0
USER
seed="$work/seed.img"
mkfs.vfat -C -n CIDATA "$seed" 2048 >/dev/null
mcopy -i "$seed" "$work/meta-data" "$work/user-data" ::/

# The image stays as built: the VM writes to an overlay, a disk larger than the image's
# (cloud-init grows the root file system to fill it).
qemu-img create -q -f qcow2 -F qcow2 -b "$(realpath "$IMAGE")" "$work/disk.qcow2" 3G
cp "$OVMF/OVMF_VARS_4M.fd" "$work/vars.fd"
# Software emulation unless ACCEL=kvm: the nested KVM of the machines this runs on fails on
# the firmware's first FPU instruction. Under KVM, the host's CPU less IA32_ARCH_CAPABILITIES
# (which nested KVM may refuse to set).
accel=${ACCEL:-tcg} cpu=max
[ "$accel" = kvm ] && cpu=host,-arch-capabilities
started=$(date +%s)
qemu-system-x86_64 -machine q35 -accel "$accel" -cpu "$cpu" -m 1024 -smp 2 \
  -drive if=pflash,format=raw,unit=0,readonly=on,file="$OVMF/OVMF_CODE_4M.fd" \
  -drive if=pflash,format=raw,unit=1,file="$work/vars.fd" \
  -drive file="$work/disk.qcow2",if=virtio,format=qcow2 \
  -drive file="$seed",if=virtio,format=raw \
  -netdev user,id=net0,hostfwd=tcp:127.0.0.1:"$HTTP"-:80,hostfwd=tcp:127.0.0.1:"$ADMIN"-:9901 \
  -device virtio-net-pci,netdev=net0 \
  -display none -monitor none -serial file:"$work/console.log" \
  -qmp unix:"$work/qmp.sock",server=on,wait=off &
QEMU=$!
pids+=("$QEMU")
fail() { echo "appliance/test.sh: $*"; echo "--- console"; tail -n 60 "$work/console.log"; exit 1; }

# Booted: cloud-init's last stage reports what it saw inside the machine, gantry's log after it.
until grep -qs 'appliance-check:' "$work/console.log"; do
  kill -0 "$QEMU" 2>/dev/null || fail "QEMU exited"
  [ $(($(date +%s) - started)) -lt "$BOOT_TIMEOUT" ] || fail "not booted within ${BOOT_TIMEOUT}s"
  sleep 1
done
booted=$(($(date +%s) - started))
check=$(grep -a 'appliance-check:' "$work/console.log" | tail -n 1 | tr -d '\r')
for expected in somaxconn=65535 nonlocal_bind=1 tw_reuse=1 migrate_req=1 pool_routes=1 conntrack=absent gantry=active \
  arp_ignore=1 bird=active routing_dir=gantry vrrp_ready=1 \
  handover=done user=gantry token_mode=640:root:gantry failed_units= \
  "package=install_ok_installed/$VERSION"; do
  [[ " $check " == *" $expected "* ]] || fail "inside the VM, expected $expected: $check"
done
root_mib=$(sed -n 's/.* root_mib=\([0-9]*\) .*/\1/p' <<< "$check")
[ "${root_mib:-0}" -gt 2600 ] || fail "the root file system was not grown to the 3 GiB disk: $check"

# Serving: the origin's answer through the appliance. QEMU accepts on the forwarded port from
# the start, so only an answer counts; gantry is running, so it has 30 s to listen.
answer=""
for _ in $(seq 1 30); do
  answer=$(curl -fsS --max-time 5 "http://127.0.0.1:$HTTP/" 2>/dev/null) && break
  sleep 1
done
[ "$answer" = "hello from the origin" ] || fail "unexpected answer: '$answer'"
# The admin token made on first boot (the test's user-data gives none; the test reads it from
# the serial console, where only its own runcmd prints it): /config and /metrics without it
# answer 401, with it 200.
token=$(sed -n 's/.* admin_token=\([A-Za-z0-9]*\) .*/\1/p' <<< "$check")
[ "${#token}" -eq 40 ] || fail "no 40-character admin token was made on first boot: $check"
check=${check/admin_token=$token/admin_token=(40 characters)}
for path in /config /metrics; do
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN$path")
  [ "$status" = 401 ] || fail "$path without the token answered $status"
done
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$ADMIN/config")
[ "$status" = 200 ] || fail "/config with the token answered $status"
# Read whole, then searched: grep -q stopping early would fail curl's write (pipefail).
metrics=$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$ADMIN/metrics")
grep -q '^gantry_requests_total{backend="10.0.2.2:'"$ORIGIN"'",class="2xx",port="http",service="web"} 1$' \
  <<< "$metrics" || fail "the request is not counted in /metrics"

# The upgrade under load: requests in a loop, a new connection each (so each one meets the
# listener as it is at that moment), while the VM installs the newer package; none may fail.
python3 - "$HTTP" "$work/load-stop" "$work/load-progress" > "$work/load.out" <<'PY' &
import http.client, os, sys
port, stop, progress = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ok = failed = 0
while not os.path.exists(stop):
    with open(progress + ".tmp", "w") as f:
        f.write(f"{ok}\n")
    os.replace(progress + ".tmp", progress)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        if answer.status == 200 and body.strip() == b"hello from the origin":
            ok += 1
        else:
            failed += 1
    except OSError:
        failed += 1
print(ok, failed)
PY
LOAD=$!
pids+=("$LOAD")
answered() { cat "$work/load-progress" 2>/dev/null || echo 0; }
# Waits (60 s at most) until the load has had $1 more answers than now.
more_answers() {
  local target=$(($(answered) + $1))
  for _ in $(seq 1 600); do [ "$(answered)" -ge "$target" ] && return 0; sleep 0.1; done
  fail "the load got no answers"
}
more_answers 5
touch "$work/upgrade/go"
until grep -qs 'appliance-upgrade:' "$work/console.log"; do
  kill -0 "$QEMU" 2>/dev/null || fail "QEMU exited during the upgrade"
  [ $(($(date +%s) - started)) -lt $((BOOT_TIMEOUT + 300)) ] || fail "no upgrade within its time"
  sleep 1
done
more_answers 5
touch "$work/load-stop"
wait "$LOAD"
read -r load_ok load_failed < "$work/load.out"
upgrade=$(grep -a 'appliance-upgrade:' "$work/console.log" | tail -n 1 | tr -d '\r')
for expected in "package=install_ok_installed/$VERSION+upgrade1" handover=done gantry=active \
  failed_units=; do
  [[ " $upgrade " == *" $expected "* ]] || fail "after the upgrade, expected $expected: $upgrade"
done
[ "$load_failed" = 0 ] || fail "$load_failed of $((load_ok + load_failed)) requests failed during the upgrade"
[ "$load_ok" -gt 0 ] || fail "no request was answered during the upgrade"

# A clean ACPI power-off: systemd stops gantry (SIGTERM) and the machine halts.
python3 - "$work/qmp.sock" <<'PY'
import json, socket, sys
qmp = socket.socket(socket.AF_UNIX)
qmp.connect(sys.argv[1])
reader = qmp.makefile()
reader.readline()  # the greeting
for command in ("qmp_capabilities", "system_powerdown"):
    qmp.sendall(json.dumps({"execute": command}).encode() + b"\n")
    while "return" not in json.loads(reader.readline()):
        pass
PY
for _ in $(seq 1 120); do kill -0 "$QEMU" 2>/dev/null || break; sleep 1; done
kill -0 "$QEMU" 2>/dev/null && fail "the VM did not power off within 120 s"
wait "$QEMU" || fail "QEMU exited with an error"
echo "appliance/test.sh: booted ($accel) in ${booted}s and served through Gantry; counted in" \
  "/metrics (read with the admin token made on first boot; refused without it); $check;" \
  "upgraded to $VERSION+upgrade1 by apt under load, $load_ok requests answered, 0 failed; powered off cleanly"
