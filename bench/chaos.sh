#!/usr/bin/env bash
# Faults under steady load, on loopback: Gantry (release build) in front of three nginx
# origins, wrk driving HTTP/1.1 keep-alive requests through it while each phase does one
# thing to it. Per phase: requests completed, failed requests (non-2xx answers and socket
# errors as wrk counts them) and what was done.
#
#   bash bench/chaos.sh                 # PHASE=8s CONNECTIONS=20
#
# Phases:
#   steady         nothing (the baseline)
#   reload x50     50 reloads (SIGHUP), the backend set changing each time
#   kill -9        one backend killed outright (the only phase where failures are excused:
#                  requests in flight on it; later ones are retried on the others)
#   graceful stop  one backend stopped gracefully (nginx SIGQUIT: idle connections closed)
#   restart        both come back
#   plugin x20     the balancer plugin's file replaced 20 times (two different plugins)
#   cache full     the same with the plugin cache folder on a full filesystem (root only)
#   cert rotation  HTTPS load while the certificate and key are replaced 10 times
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

PHASE=${PHASE:-8s}
CONNECTIONS=${CONNECTIONS:-20}

install_missing nginx:nginx-light wrk:wrk openssl:openssl
if [ -z "${GANTRY:-}" ]; then
  bash .ci/setup
  cargo build --release --locked -p gantry --bin gantry >&2
  GANTRY=$PWD/target/release/gantry
fi
PLUGINS=${PLUGINS:-$PWD/target/plugins/wasm32-wasip2/release}

# The cache phase may mount a small filesystem inside the scratch folder: unmount it first.
trap 'umount "$work/cache" 2>/dev/null || true; cleanup' EXIT

# Three origins, each one nginx process (no master: one pid to kill).
declare -A ORIGIN ORIGIN_PID
start_origin() {
  local name=$1
  mkdir -p "$work/nginx-$name"
  cat > "$work/nginx-$name.conf" <<CONF
master_process off;
daemon off;
pid $work/nginx-$name/pid;
error_log $work/nginx-$name/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx-$name;
  server {
    listen 127.0.0.1:${ORIGIN[$name]};
    location / { return 200 "hello from $name\n"; }
  }
}
CONF
  nginx -c "$work/nginx-$name.conf" & ORIGIN_PID[$name]=$!; pids+=($!)
  wait_port "${ORIGIN[$name]}"
}
for name in a b c; do ORIGIN[$name]=$(free_port); start_origin "$name"; done

make_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=chaos.test" -addext subjectAltName=DNS:chaos.test \
    -keyout "$work/key.tmp" -out "$work/cert.tmp" 2>/dev/null
  # Key first, then the certificate, each renamed into place (never half-written).
  mv "$work/key.tmp" "$work/key.pem"
  mv "$work/cert.tmp" "$work/cert.pem"
}
make_cert
cp "$PLUGINS/round_robin.wasm" "$work/balancer.wasm"
mkdir -p "$work/cache"

ADMIN=$(free_port); HTTP=$(free_port); HTTPS=$(free_port)
# The configuration with backends $@ (names of origins).
write_config() {
  local list=() name
  for name in "$@"; do list+=("\"127.0.0.1:${ORIGIN[$name]}\""); done
  local backends
  backends=$(IFS=,; echo "${list[*]}")
  cat > "$work/gantry.yaml.tmp" <<CONF
admin: { listen: "127.0.0.1:$ADMIN" }
runtime: { workers: 1, plugin_cache: "$work/cache", watch_interval: 1h }
plugins:
  chaos: { file: "$work/balancer.wasm" }
defaults:
  retries: 2
services:
  - name: chaos
    address: 127.0.0.1
    ports:
      - { name: http, port: $HTTP, protocol: http, backends: [$backends], balancer: { policy: chaos } }
      - name: https
        port: $HTTPS
        protocol: https
        backends: [$backends]
        tls: { certificates: [{ cert: "$work/cert.pem", key: "$work/key.pem" }] }
CONF
  mv "$work/gantry.yaml.tmp" "$work/gantry.yaml"
}
write_config a b c
"$GANTRY" --log-level warn run --config "$work/gantry.yaml" 2>"$work/gantry.log" & GANTRY_PID=$!
pids+=("$GANTRY_PID")
wait_port "$HTTP"; wait_port "$HTTPS"

reload() { kill -HUP "$GANTRY_PID"; }

# Runs wrk against $1 for PHASE while the phase's action (the remaining words, a shell
# command) runs, and prints the phase's line.
phase() {
  local label=$1 url=$2; shift 2
  wrk -t1 -c"$CONNECTIONS" -d"$PHASE" "$url" > "$work/wrk.out" 2>&1 &
  local load=$!
  sleep 1
  "$@"
  wait "$load"
  python3 - "$label" "$work/wrk.out" <<'PY'
import re, sys
label, text = sys.argv[1], open(sys.argv[2]).read()
total = re.search(r"(\d+) requests in", text)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = sum(int(g) for g in sock.groups()) if sock else 0
failed = (int(non2xx.group(1)) if non2xx else 0) + errors
if not total or int(total.group(1)) == 0:
    print(f"{label:<16} no requests completed: the load did not run\n{text}")
    sys.exit(1)
print(f"{label:<16}{int(total.group(1)):>10}{failed:>10}   {sock.group(0) if sock else 'no socket errors'}")
PY
}

reloads() {
  local sets=("a b c" "a b" "b c" "a c" "a b c")
  for i in $(seq 1 50); do
    # shellcheck disable=SC2086
    write_config ${sets[$((i % 5))]}
    reload
    sleep 0.1
  done
  write_config a b c; reload
}
kill_backend() { kill -9 "${ORIGIN_PID[c]}"; wait "${ORIGIN_PID[c]}" 2>/dev/null || true; }
stop_backend() { kill -QUIT "${ORIGIN_PID[b]}"; }
restart_backends() { start_origin b; start_origin c; }
replace_plugin() {
  local files=("$PLUGINS/random.wasm" "$PLUGINS/round_robin.wasm")
  for i in $(seq 1 20); do
    cp "${files[$((i % 2))]}" "$work/balancer.tmp"
    mv "$work/balancer.tmp" "$work/balancer.wasm"
    reload
    sleep 0.2
  done
}
fill_cache() {
  if [ "$(id -u)" -ne 0 ] || ! mount -t tmpfs -o size=1m tmpfs "$work/cache" 2>/dev/null; then
    echo "(cache full: needs root to mount a small filesystem; replacing the plugin only)"
  else
    dd if=/dev/zero of="$work/cache/filler" bs=64k count=100 2>/dev/null || true
  fi
  cp "$PLUGINS/least_request.wasm" "$work/balancer.tmp"
  mv "$work/balancer.tmp" "$work/balancer.wasm"
  reload
}
rotate_cert() {
  for _ in $(seq 1 10); do make_cert; reload; sleep 0.3; done
}

echo "$(date -u +%Y-%m-%d) chaos: wrk -t1 -c$CONNECTIONS -d$PHASE per phase"
printf '%-16s%10s%10s   %s\n' phase requests failed "wrk's socket errors"
phase steady "http://127.0.0.1:$HTTP/" true
phase "reload x50" "http://127.0.0.1:$HTTP/" reloads
phase "kill -9" "http://127.0.0.1:$HTTP/" kill_backend
phase "graceful stop" "http://127.0.0.1:$HTTP/" stop_backend
phase restart "http://127.0.0.1:$HTTP/" restart_backends
phase "plugin x20" "http://127.0.0.1:$HTTP/" replace_plugin
phase "cache full" "http://127.0.0.1:$HTTP/" fill_cache
phase "cert rotation" "https://127.0.0.1:$HTTPS/" rotate_cert
echo "gantry's log: $(grep -c . "$work/gantry.log" || true) lines, $(grep -c ' WARN ' "$work/gantry.log" || true) warnings, $(grep -c ' ERROR ' "$work/gantry.log" || true) errors"
# The distinct warnings and errors, without their timestamps.
grep -E ' (WARN|ERROR) ' "$work/gantry.log" | sed -E 's/^[^ ]+ +//; s/[0-9]+(\.[0-9]+)?(ms|µs|s)\b/N/g' \
  | sort | uniq -c | sort -rn | head -20 || true
kill -0 "$GANTRY_PID" && echo "gantry still running"
