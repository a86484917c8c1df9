#!/usr/bin/env bash
# How Gantry's start, memory and reload scale with the number of ports.
#
#   bash bench/scale.sh                  # PORTS="100 1000 10000" WORKERS=2 PROTOCOL=http
#   PORTS="500 5000" PROTOCOL=tcp bash bench/scale.sh
#
# For each count N: a configuration of N services, each with its own address (127.1.x.y, as a
# cloud load balancer gives each Service its own IP) and one HTTP port 8080, balanced by the
# default Wasm balancer (builtin:round-robin) over one origin. (Binding N ports on *one*
# address with port 0 measures the kernel's search for free ephemeral ports instead: at 10,000
# ports that search was 87% of the start time.) Measured:
#   ready_s     from process start to /readyz answering 200
#   rss_mib     resident memory once ready (VmRSS), and the peak so far (VmHWM)
#   served      requests through a sample of 20 ports (all must answer 200 from the origin)
#   faults      every gantry_plugin_faults_total series summed (must be 0: no port fell back
#               to the native round-robin), and the plugin not quarantined
#   start_ms    of ready_s, the first reconcile (build + commit of every port), from the log
#   reload_ms   SIGHUP after changing ONE port's backends, until the reload is logged;
#               load_ms is the part spent reading and validating the file, diff_ms comparing
#               the models, apply_ms the reconcile itself (build + commit), from Gantry's log
set -euo pipefail
cd "$(dirname "$0")/.."

PORTS=${PORTS:-"100 1000 10000"}
WORKERS=${WORKERS:-2}
PROTOCOL=${PROTOCOL:-http}

for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "needs $tool" >&2; exit 1; }
done
cargo build --release --locked -p gantry --bin gantry >&2
GANTRY=$PWD/target/release/gantry
# One socket per port, and a few more.
ulimit -n "$(ulimit -Hn)"

# shellcheck source=bench/lib.sh
source bench/lib.sh

# The origin: a threaded HTTP server answering 200 `origin`.
ORIGIN=$(free_port)
python3 - "$ORIGIN" > /dev/null 2>&1 <<'EOF' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "6"); self.end_headers()
        self.wfile.write(b"origin")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
pids+=($!)

config() { # N, backends of service 0
  local n=$1 first=$2
  echo "admin: { listen: \"127.0.0.1:$ADMIN\" }"
  echo "runtime: { workers: $WORKERS, watch_interval: 1h, plugin_cache: off }"
  echo "services:"
  python3 - "$n" "$ORIGIN" "$first" "$PROTOCOL" <<'EOF'
import sys
n, origin, first, protocol = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
for i in range(n):
    backends = first if i == 0 else f'"127.0.0.1:{origin}"'
    address = f"127.1.{i // 250}.{i % 250 + 1}"
    print(f'  - {{ name: svc-{i}, address: {address}, ports: [{{ name: http, port: 8080, protocol: {protocol}, backends: [{backends}] }}] }}')
EOF
}

metric_sum() { # family: the sum of its series
  curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v f="$1" 'index($0, f) == 1 { s += $NF } END { print s + 0 }'
}

printf '%7s %8s %9s %8s %9s %7s %7s %10s %8s %8s %9s\n' ports ready_s start_ms rss_mib peak_mib served faults reload_ms load_ms diff_ms apply_ms
for n in $PORTS; do
  ADMIN=$(free_port)
  cfg="$work/gantry-$n.yaml"
  log="$work/gantry-$n.log"
  config "$n" "\"127.0.0.1:$ORIGIN\"" > "$cfg"
  start=$(date +%s.%N)
  "$GANTRY" run --config "$cfg" > "$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  until curl -sf "http://127.0.0.1:$ADMIN/readyz" > /dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "gantry exited:" >&2; tail -5 "$log" >&2; exit 1; }
    sleep 0.01
  done
  ready=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
  start_ms=$(grep 'reconciled' "$log" | head -1 | sed -n 's/.*apply_ms=\([0-9]*\).*/\1/p')
  rss=$(awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")
  peak=$(awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")

  # Requests through a sample of ports, addresses from /config.
  served=0
  for address in $(curl -s "http://127.0.0.1:$ADMIN/config" | python3 -c '
import json, random, sys
listeners = json.load(sys.stdin)["listeners"].values()
for l in random.Random(7).sample(list(listeners), min(20, len(listeners))):
    print(l["address"])'); do
    body=$(curl -s "http://$address/")
    [ "$body" = origin ] && served=$((served + 1))
  done
  faults=$(metric_sum gantry_plugin_faults_total)
  quarantined=$(metric_sum gantry_plugin_quarantined)
  [ "$quarantined" = 0 ] || faults="$faults(q)"

  # Reload: service 0 gains a second backend; nothing else changes.
  before=$(grep -c 'reload applied' "$log" || true)
  config "$n" "\"127.0.0.1:$ORIGIN\", \"127.0.0.2:$ORIGIN\"" > "$cfg"
  t0=$(date +%s.%N)
  kill -HUP "$pid"
  until [ "$(grep -c 'reload applied' "$log" || true)" != "$before" ]; do
    sleep 0.002
  done
  reload=$(python3 -c "import time; print(f'{(time.time() - $t0) * 1000:.0f}')")
  load_ms=$(grep 'reload applied' "$log" | tail -1 | sed -n 's/.*load_ms=\([0-9.]*\).*/\1/p')
  apply_ms=$(grep 'reconciled' "$log" | tail -1 | sed -n 's/.*apply_ms=\([0-9.]*\).*/\1/p')
  diff_ms=$(grep 'reconciled' "$log" | tail -1 | sed -n 's/.*diff_ms=\([0-9.]*\).*/\1/p')

  printf '%7s %8s %9s %8s %9s %7s %7s %10s %8.1f %8.1f %9.1f\n' "$n" "$ready" "${start_ms:-?}" "$rss" "$peak" "$served/20" "$faults" "$reload" "${load_ms:-0}" "${diff_ms:-0}" "${apply_ms:-0}"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
done
