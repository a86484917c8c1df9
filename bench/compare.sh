#!/usr/bin/env bash
# Gantry beside HAProxy on this machine, in one run, with equivalent one-thread configurations.
#
#   bash bench/compare.sh                 # ROUNDS=3 DURATION=10s CONNECTIONS=50 by default
#   ROUNDS=5 DURATION=20s bash bench/compare.sh
#   WORKERS=2 bash bench/compare.sh     # two worker threads per proxy, nothing pinned
#   UDP=0 bash bench/compare.sh         # without the UDP row
#   CELLS="h2_haproxy h2_gantry" bash bench/compare.sh   # only these cells
#   H2_CONNECTIONS=100 bash bench/compare.sh             # h2load connections (default 20)
#   PROFILE=dist bash bench/compare.sh  # the build that ships (default: release, faster to build)
#
# One nginx origin on loopback serves a small response. wrk drives, in turn:
#   http   HTTP/1.1 keep-alive requests: direct to nginx, through HAProxy, through pingora
#          alone (gantry/examples/pingora_baseline.rs: pingora's server and the smallest
#          proxy), and through Gantry (its own HTTP/1 relay)
#   tcp    the same HTTP traffic through a layer-4 proxy (HAProxy `mode tcp`, Gantry `tcp`)
#   tls    a new TLS connection per request (`Connection: close`), ECDSA P-256, TLS 1.3
#   h2     HTTP/2 over TLS (h2load: 20 connections x 10 streams), Gantry's own HTTP/2 server
#   grpc   gRPC-shaped calls: HTTP/2 over TLS in, h2c to an nginx h2c origin (HAProxy `proto h2`,
#          Gantry `backend_protocol: h2c`), each a POST of one length-prefixed message answered
#          with a message and `grpc-status` trailers
#   udp    bench/udp.sh, run last: beside nginx `stream` and Envoy `udp_proxy`
# Each proxy runs one worker thread pinned to CPU 0; wrk and nginx share CPU 1, so the proxy's
# own cost decides its figures. Each cell is the median of ROUNDS runs, the rounds interleaved. The last column is
# Gantry / HAProxy (higher is better for req/s, lower for latency and CPU per request). The CPU
# column is the proxy's user + system time over the run divided by the requests completed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
# Worker threads of each proxy. With 1, proxies are pinned to CPU 0 and wrk and nginx to CPU 1;
# with more, nothing is pinned (this is a 2-vCPU machine: everything shares both).
WORKERS=${WORKERS:-1}
if [ "$WORKERS" = 1 ]; then PROXY_CPUS=0 LOAD_CPUS=1; else PROXY_CPUS=0-$(($(nproc) - 1)) LOAD_CPUS=$PROXY_CPUS; fi

install_missing haproxy:haproxy nginx:nginx-light wrk:wrk h2load:nghttp2-client \
  openssl:openssl taskset:util-linux python3:python3
bash .ci/setup
# PROFILE=dist measures the build that ships (fat LTO, one codegen unit: images, packages);
# `release` builds in a minute instead of ten, for day-to-day comparisons.
PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" --locked -p gantry --bin gantry --example pingora_baseline >&2
GANTRY=$PWD/target/$PROFILE/gantry
PINGORA=$PWD/target/$PROFILE/examples/pingora_baseline


ORIGIN=$(free_port); ORIGIN_H2C=$(free_port); ADMIN=$(free_port)
G_HTTP=$(free_port); G_NATIVE=$(free_port); G_TCP=$(free_port); G_TLS=$(free_port)
H_HTTP=$(free_port); H_TCP=$(free_port); H_TLS=$(free_port); H_H2=$(free_port); H_GRPC=$(free_port)
G_GRPC=$(free_port)
P_HTTP=$(free_port)

# One certificate for both proxies.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"

mkdir -p "$work/nginx"
origin_nginx_conf "$ORIGIN" "$ORIGIN_H2C" > "$work/nginx.conf"
# A gRPC-shaped call: a length-prefixed message in, a message and `grpc-status` trailers out.
printf '\0\0\0\0\x05hello' > "$work/grpc-request"

{ haproxy_conf_head "$WORKERS"; cat <<EOF; } > "$work/haproxy.cfg"
frontend http
  bind 127.0.0.1:$H_HTTP
  option forwardfor
  default_backend origin
frontend tls
  bind 127.0.0.1:$H_TLS ssl crt $work/haproxy.pem alpn http/1.1
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  default_backend origin
frontend h2
  bind 127.0.0.1:$H_H2 ssl crt $work/haproxy.pem alpn h2,http/1.1
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  default_backend origin
frontend grpc
  bind 127.0.0.1:$H_GRPC ssl crt $work/haproxy.pem alpn h2
  default_backend origin_h2c
backend origin
  server o 127.0.0.1:$ORIGIN
backend origin_h2c
  server o 127.0.0.1:$ORIGIN_H2C proto h2
listen tcp
  mode tcp
  bind 127.0.0.1:$H_TCP
  server o 127.0.0.1:$ORIGIN
EOF

{ gantry_conf_head "$ADMIN" "$WORKERS"; cat <<EOF; } > "$work/gantry.yaml"
      # The default balancer, builtin:round-robin, is a Wasm plugin; http-native is the same
      # round-robin in Rust, so the pair shows what the plugin call costs end to end.
      - { name: http, port: $G_HTTP, protocol: http, backends: ["127.0.0.1:$ORIGIN"] }
      - { name: http-native, port: $G_NATIVE, protocol: http, backends: ["127.0.0.1:$ORIGIN"], balancer: { policy: "native:round-robin" } }
      - { name: tcp, port: $G_TCP, protocol: tcp, backends: ["127.0.0.1:$ORIGIN"] }
      - name: tls
        port: $G_TLS
        protocol: https
        backends: ["127.0.0.1:$ORIGIN"]
        tls: { certificates: [{ cert: "$work/cert.pem", key: "$work/key.pem" }] }
      - name: grpc
        port: $G_GRPC
        protocol: https
        backend_protocol: h2c
        backends: ["127.0.0.1:$ORIGIN_H2C"]
        tls: { certificates: [{ cert: "$work/cert.pem", key: "$work/key.pem" }] }
EOF

taskset -c "$LOAD_CPUS" nginx -c "$work/nginx.conf" & pids+=($!); NGINX_PID=$!
taskset -c "$PROXY_CPUS" haproxy -f "$work/haproxy.cfg" -db & pids+=($!); HAPROXY_PID=$!
taskset -c "$PROXY_CPUS" "$GANTRY" --log-level warn run --config "$work/gantry.yaml" & pids+=($!); GANTRY_PID=$!
taskset -c "$PROXY_CPUS" "$PINGORA" "127.0.0.1:$P_HTTP" "127.0.0.1:$ORIGIN" 2>/dev/null & pids+=($!); PINGORA_PID=$!
for port in $ORIGIN $ORIGIN_H2C $H_HTTP $H_TCP $H_TLS $H_H2 $H_GRPC $G_HTTP $G_NATIVE $G_TCP $G_TLS $G_GRPC $P_HTTP; do wait_port "$port"; done

# CPU time (user + system, clock ticks) process $1 has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Prints "req/s p50_ms p99_ms cpu_us_per_request" for one wrk run against $2, the CPU being
# that of process $1 (the proxy under test; the origin for the direct row).
measure() {
  local pid=$1 url=$2; shift 2
  local before after out
  before=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPUS" wrk -t"$WORKERS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" 2>&1)
  after=$(cpu_ticks "$pid")
  echo "$out" | python3 -c '
import re, sys
text = sys.stdin.read()
ticks = int(sys.argv[2]) - int(sys.argv[1])
hz = int(sys.argv[3])
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
def ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
total = re.search(r"(\d+) requests in", text)
# Anchored: "89.50%" in the stdev column also ends in "50%".
p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
values = [float(rps.group(1)) if rps else None] + [ms(m.group(1)) if m else None for m in (p50, p99)]
if None in values or not total or int(total.group(1)) == 0:
    # A run that cannot be read is left out of the median, and shown.
    sys.stderr.write("unreadable wrk output:\n" + text + "\n")
    sys.exit(0)
cpu_us = ticks * 1e6 / hz / int(total.group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
print(f"{values[0]:.0f} {values[1]:.3f} {values[2]:.3f} {cpu_us:.2f}" + (" ERRORS" if errors else ""))' "$before" "$after" "$(getconf CLK_TCK)"
}

# The same four columns for one h2load run (HTTP/2 over TLS, ALPN h2): H2_CONNECTIONS (20)
# connections of 10 streams each. h2load gives no percentiles: the p50 column holds the mean,
# p99 the maximum.
measure_h2() {
  local pid=$1 url=$2; shift 2
  local before after out
  before=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPUS" h2load -t "$WORKERS" -c "${H2_CONNECTIONS:-20}" -m 10 -D "$DURATION" "$@" "$url" 2>&1)
  after=$(cpu_ticks "$pid")
  echo "$out" | python3 -c '
import re, sys
text = sys.stdin.read()
ticks = int(sys.argv[2]) - int(sys.argv[1])
hz = int(sys.argv[3])
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
def ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None
rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
times = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
if not (rate and done and times) or int(done.group(1)) == 0:
    sys.stderr.write("unreadable h2load output:\n" + text + "\n")
    sys.exit(0)
cpu_us = ticks * 1e6 / hz / int(done.group(1))
bad = int(done.group(2)) + int(done.group(3))
print(f"{float(rate.group(1)):.0f} {ms(times.group(3)):.3f} {ms(times.group(2)):.3f} {cpu_us:.2f}" + (" ERRORS" if bad else ""))' "$before" "$after" "$(getconf CLK_TCK)"
}

# Median, per column, of the measurements on standard input (one per line; blank lines are
# runs that could not be read).
median() {
  python3 -c '
import statistics, sys
rows = [line.split() for line in sys.stdin if line.strip()]
if not rows:
    print("0 0 0 0 ERRORS")
    sys.exit(0)
flag = " ERRORS" if any(len(r) > 4 for r in rows) else ""
cols = [statistics.median(float(r[i]) for r in rows) for i in range(4)]
print(f"{cols[0]:.0f} {cols[1]:.3f} {cols[2]:.3f} {cols[3]:.2f}{flag}")'
}

close=(-H "Connection: close")
grpc=(-d "$work/grpc-request" -H "content-type: application/grpc" -H "te: trailers")
# One measurement of the cell named $1.
measure_cell() {
  case $1 in
    http_direct) measure "$NGINX_PID" "http://127.0.0.1:$ORIGIN/" ;;
    http_haproxy) measure "$HAPROXY_PID" "http://127.0.0.1:$H_HTTP/" ;;
    http_pingora) measure "$PINGORA_PID" "http://127.0.0.1:$P_HTTP/" ;;
    http_gantry) measure "$GANTRY_PID" "http://127.0.0.1:$G_HTTP/" ;;
    http_native) measure "$GANTRY_PID" "http://127.0.0.1:$G_NATIVE/" ;;
    tcp_haproxy) measure "$HAPROXY_PID" "http://127.0.0.1:$H_TCP/" ;;
    tcp_gantry) measure "$GANTRY_PID" "http://127.0.0.1:$G_TCP/" ;;
    tls_haproxy) measure "$HAPROXY_PID" "https://127.0.0.1:$H_TLS/" "${close[@]}" ;;
    tls_gantry) measure "$GANTRY_PID" "https://127.0.0.1:$G_TLS/" "${close[@]}" ;;
    h2_haproxy) measure_h2 "$HAPROXY_PID" "https://127.0.0.1:$H_H2/" ;;
    h2_gantry) measure_h2 "$GANTRY_PID" "https://127.0.0.1:$G_TLS/" ;;
    grpc_haproxy) measure_h2 "$HAPROXY_PID" "https://127.0.0.1:$H_GRPC/bench.Echo/Say" "${grpc[@]}" ;;
    grpc_gantry) measure_h2 "$GANTRY_PID" "https://127.0.0.1:$G_GRPC/bench.Echo/Say" "${grpc[@]}" ;;
  esac
}
# CELLS="h2_haproxy h2_gantry" measures only those.
read -r -a cells <<< "${CELLS:-http_direct http_haproxy http_pingora http_gantry http_native tcp_haproxy tcp_gantry tls_haproxy tls_gantry h2_haproxy h2_gantry grpc_haproxy grpc_gantry}"
# Rounds are interleaved: each round measures every cell once, in turn, so a change in the
# shared machine's speed during the run reaches HAProxy and Gantry alike.
for _ in $(seq 1 "$ROUNDS"); do
  for cell in "${cells[@]}"; do
    echo "$cell $(measure_cell "$cell")" >> "$work/rounds"
  done
done
declare -A result
for cell in "${cells[@]}"; do
  result[$cell]=$(sed -n "s/^$cell //p" "$work/rounds" | median)
done

echo
echo "$(date -u +%Y-%m-%d) $(nproc) CPUs; $(haproxy -v | head -1 | cut -d' ' -f1-3); gantry built with --profile $PROFILE; $WORKERS worker(s) each; wrk -t$WORKERS -c$CONNECTIONS -d$DURATION, median of $ROUNDS interleaved rounds"
pairs=()
for key in "${!result[@]}"; do pairs+=("$key" "${result[$key]}"); done
[ "${#pairs[@]}" -gt 0 ] || { echo "no cells measured" >&2; exit 1; }
python3 - "${pairs[@]}" <<'EOF'
import sys
pairs = sys.argv[1:]
r = {pairs[i]: pairs[i + 1].split() for i in range(0, len(pairs), 2)}
print(f"{'test':<22}{'target':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>11}   gantry/haproxy")
names = {"http": "http keep-alive", "tcp": "tcp (http over L4)", "tls": "tls new conn/s", "h2": "h2 tls (mean/max)", "grpc": "grpc h2c (mean/max)"}
for test in ("http", "tcp", "tls", "h2", "grpc"):
    for target in ("direct", "haproxy", "pingora", "native", "gantry"):
        row = r.get(f"{test}_{target}")
        if not row:
            continue
        note = ""
        if target == "gantry" and f"{test}_haproxy" in r:
            h = r[f"{test}_haproxy"]
            note = f"   req/s x{float(row[0]) / float(h[0]):.2f}, cpu/req x{float(row[3]) / float(h[3]):.2f}, p50 x{float(row[1]) / float(h[1]):.2f}, p99 x{float(row[2]) / float(h[2]):.2f}"
            if f"{test}_pingora" in r:
                note += f"  (req/s x{float(row[0]) / float(r[test + '_pingora'][0]):.2f} of pingora alone)"
            if f"{test}_native" in r:
                note += f"  (Wasm balancer: req/s x{float(row[0]) / float(r[test + '_native'][0]):.2f} of native)"
        if len(row) > 4:
            note += "  (errors!)"
        print(f"{names[test]:<22}{target:<9}{float(row[0]):>10.0f}{float(row[1]):>9.3f}{float(row[2]):>9.3f}{float(row[3]):>11.2f}{note}")
EOF

# UDP has no HAProxy to compare with: its row comes from bench/udp.sh (nginx `stream`, Envoy),
# one worker each.
if [ "$WORKERS" = 1 ] && [ "${UDP:-1}" != 0 ]; then
  echo
  ROUNDS=$ROUNDS bash bench/udp.sh
fi
