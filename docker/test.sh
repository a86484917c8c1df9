#!/usr/bin/env bash
# Runs the image docker/build.sh wrote, with podman: loaded from its archive into a storage of
# the test's own, run with a read-only root, its own user, only CAP_NET_BIND_SERVICE, no new
# privileges, the host's network, and a configuration mounted over /etc/gantry/gantry.yaml with
# its admin token from the environment. The image's labels name this commit; Gantry says the
# same in /config; it proxies a request to an nginx origin on loopback, /metrics counts it
# (read with the token; /config and /metrics without it are refused), and SIGTERM stops it
# with status 0. Needs root.
#
#   bash docker/test.sh                   # ARCHIVE=target/gantry-oci.tar
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ARCHIVE=${ARCHIVE:-target/gantry-oci.tar}
install_missing podman:podman runc:runc nginx:nginx-light curl:curl python3:python3
NAME=gantry-test-$$
# podman with storage of its own. runc and cgroupfs, and limits no higher than this process
# has: what works on machines with cgroup v1 and no CAP_SYS_RESOURCE (such as CI's), and
# anywhere else.
podman=(podman --root "$work/storage" --runroot "$work/run" --storage-driver vfs
  --runtime runc --cgroup-manager cgroupfs)
trap '"${podman[@]}" rm --force --time 0 "$NAME" >/dev/null 2>&1 || true; cleanup' EXIT

mkdir -p "$work/nginx"
image=$("${podman[@]}" load --quiet -i "$ARCHIVE" | sed -n 's/^Loaded image[^:]*: //p' | head -1)
revision=$("${podman[@]}" image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$image")
[ "$revision" = "$(git rev-parse HEAD)" ] \
  || { echo "the image's revision label is $revision, not this commit"; exit 1; }
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

"${podman[@]}" run --detach --name "$NAME" --network host --read-only \
  --cap-drop all --cap-add NET_BIND_SERVICE --security-opt no-new-privileges \
  --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096 \
  --tmpfs /var/cache/gantry:rw,mode=0700,U \
  -v "$work/gantry.yaml:/etc/gantry/gantry.yaml:ro" -e "GANTRY_ADMIN_TOKEN=$TOKEN" \
  "$image" >/dev/null
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$HTTP") 2>/dev/null && break
  [ "$("${podman[@]}" inspect --format '{{.State.Running}}' "$NAME")" = true ] || break
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$HTTP") 2>/dev/null \
  || { echo "gantry did not listen:"; "${podman[@]}" logs "$NAME"; exit 1; }
answer=$(curl -fsS "http://127.0.0.1:$HTTP/")
[ "$answer" = "hello from the origin" ] || { echo "unexpected answer: $answer"; "${podman[@]}" logs "$NAME"; exit 1; }
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
# The build that runs is the one the label names.
commit=$(curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN/config" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["build"]["commit"])')
[ "$commit" = "$revision" ] || { echo "/config says commit $commit, the label $revision"; exit 1; }
"${podman[@]}" kill --signal TERM "$NAME" >/dev/null
status=$("${podman[@]}" wait "$NAME")
[ "$status" = 0 ] || { echo "gantry exited $status on SIGTERM"; "${podman[@]}" logs "$NAME"; exit 1; }
size=$(stat -c %s "$ARCHIVE")
echo "docker/test.sh: the image (revision $revision) served a request through Gantry under podman, counted it, and stopped on SIGTERM; archive $((size / 1024 / 1024)) MiB"
