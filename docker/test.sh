#!/usr/bin/env bash
# Runs the image docker/build.sh wrote, with runc (RUNTIME=crun also works where cgroups
# allow it) and no container daemon: its layer unpacked
# as a read-only root, its user, entrypoint and environment as the image says, only
# CAP_NET_BIND_SERVICE, the host's network, and a configuration mounted over
# /etc/gantry/gantry.yaml, its admin token from the environment. Gantry proxies a request to an
# nginx origin on loopback, /metrics counts it (read with the token; /config and /metrics
# without it are refused), and SIGTERM stops it. Needs root.
#
#   bash docker/test.sh                   # ARCHIVE=target/gantry-oci.tar
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ARCHIVE=${ARCHIVE:-target/gantry-oci.tar}
RUNTIME=${RUNTIME:-runc}
install_missing "$RUNTIME:$RUNTIME" nginx:nginx-light curl:curl python3:python3
NAME=gantry-test-$$
trap '"$RUNTIME" delete --force "$NAME" >/dev/null 2>&1 || true; cleanup' EXIT

mkdir -p "$work/oci" "$work/bundle/rootfs" "$work/nginx"
tar -xf "$ARCHIVE" -C "$work/oci"
ORIGIN=$(free_port); HTTP=$(free_port); ADMIN=$(free_port)
origin_nginx_conf "$ORIGIN" > "$work/nginx.conf"
nginx -c "$work/nginx.conf" & pids+=($!)
wait_port "$ORIGIN"
# The admin endpoint on every address, as the image's own configuration has it, with its token
# from the environment (docker/README.md).
TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(30))')
cat > "$work/gantry.yaml" <<CONF
admin: { listen: "0.0.0.0:$ADMIN", token_env: GANTRY_ADMIN_TOKEN }
services:
  - name: web
    address: 127.0.0.1
    ports:
      - { name: http, port: $HTTP, protocol: http, backends: ["127.0.0.1:$ORIGIN"] }
CONF
chmod 0644 "$work/gantry.yaml"

# The image's layer as the root file system, and a runtime spec made from its config.
python3 - "$work/oci" "$work/bundle" "$work/gantry.yaml" "$TOKEN" <<'PY'
import json, os, sys, tarfile
oci, bundle, config, token = sys.argv[1:]
blob = lambda d: os.path.join(oci, "blobs", *d.split(":"))
index = json.load(open(os.path.join(oci, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
image = json.load(open(blob(manifest["config"]["digest"])))["config"]
for layer in manifest["layers"]:
    with tarfile.open(blob(layer["digest"])) as tar:
        tar.extractall(os.path.join(bundle, "rootfs"), filter="tar")
uid, gid = (int(x) for x in image["User"].split(":"))
caps = ["CAP_NET_BIND_SERVICE"]
spec = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False,
        "user": {"uid": uid, "gid": gid},
        "args": image["Entrypoint"] + image["Cmd"],
        "env": image["Env"] + ["PATH=/", f"GANTRY_ADMIN_TOKEN={token}"],
        "cwd": image.get("WorkingDir") or "/",
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted", "ambient")},
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "gantry",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
        {"destination": "/var/cache/gantry", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", f"uid={uid}", f"gid={gid}", "mode=700"]},
        {"destination": "/etc/gantry/gantry.yaml", "type": "bind", "source": config, "options": ["bind", "ro"]},
    ],
    # The host's network (as `--network host`): no network namespace.
    "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]},
}
json.dump(spec, open(os.path.join(bundle, "config.json"), "w"), indent=2)
PY

"$RUNTIME" run --bundle "$work/bundle" "$NAME" >"$work/gantry.log" 2>&1 &
RUNNING=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$HTTP") 2>/dev/null && break
  kill -0 "$RUNNING" 2>/dev/null || break
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$HTTP") 2>/dev/null || { echo "gantry did not listen:"; cat "$work/gantry.log"; exit 1; }
answer=$(curl -fsS "http://127.0.0.1:$HTTP/")
[ "$answer" = "hello from the origin" ] || { echo "unexpected answer: $answer"; cat "$work/gantry.log"; exit 1; }
# /config and /metrics without the token are refused; with it, served.
for path in /config /metrics; do
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN$path")
  [ "$status" = 401 ] || { echo "$path without the token answered $status"; exit 1; }
done
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN/config")
[ "$status" = 200 ] || { echo "/config with the token answered $status"; exit 1; }
# Read whole, then searched: grep -q stopping early would fail curl's write (pipefail).
metrics=$(curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN/metrics")
grep -q '^gantry_requests_total{backend="127.0.0.1:'"$ORIGIN"'",class="2xx",port="http",service="web"} 1$' \
  <<< "$metrics" || { echo "the request is not counted in /metrics"; exit 1; }
"$RUNTIME" kill "$NAME" TERM
wait "$RUNNING" || { echo "gantry did not exit 0 on SIGTERM"; cat "$work/gantry.log"; exit 1; }
size=$(python3 - "$work/oci" <<'PY'
import json, os, sys
oci = sys.argv[1]
blob = lambda d: os.path.join(oci, "blobs", *d.split(":"))
index = json.load(open(os.path.join(oci, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
print(sum(l["size"] for l in manifest["layers"]) + manifest["config"]["size"])
PY
)
echo "docker/test.sh: the image served a request through Gantry, counted it, and stopped on SIGTERM; $((size / 1024 / 1024)) MiB compressed ($size bytes)"
