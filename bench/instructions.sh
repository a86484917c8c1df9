#!/usr/bin/env bash
# Instructions per proxied HTTP/1.1 keep-alive request, Gantry beside HAProxy: a figure that
# does not move with the shared machine's noise. Each proxy runs under valgrind's callgrind;
# after a warm-up, its counters are zeroed, REQUESTS requests are sent (h2load --h1, over
# CONNECTIONS kept-alive connections), and the counters dumped: instructions (Ir) in that
# window divided by REQUESTS. Everything the process executed counts: user-space code and
# libraries, not the kernel's share (callgrind does not see it).
#
#   bash bench/instructions.sh              # REQUESTS=20000 CONNECTIONS=10
# Gantry is counted twice: on a port with the native balancer and on one with the default
# (the Wasm builtin:round-robin).
#   GANTRY=path/to/gantry bash bench/instructions.sh   # another build (e.g. other settings)
#   PROFILES=/tmp/p bash bench/instructions.sh   # also keep each counted window's profile, for
#                                                # callgrind_annotate /tmp/p/gantry.callgrind
#   HTTP=h2 bash bench/instructions.sh       # HTTP/2 over TLS (ALPN h2, 10 streams per
#                                            # connection) to HTTP/1 backends, both proxies
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-10}
HTTP=${HTTP:-h1}
case $HTTP in
  h1) scheme=http load=(--h1) ;;
  h2) scheme=https load=(-m 10) ;;
  *) echo "HTTP is h1 or h2" >&2; exit 1 ;;
esac

install_missing valgrind:valgrind h2load:nghttp2-client haproxy:haproxy nginx:nginx-light
if [ -z "${GANTRY:-}" ]; then
  bash .ci/setup
  cargo build --release --locked -p gantry --bin gantry >&2
  GANTRY=$PWD/target/release/gantry
fi


ORIGIN=$(free_port); ADMIN=$(free_port); G_HTTP=$(free_port); G_WASM=$(free_port); H_HTTP=$(free_port)

mkdir -p "$work/nginx"
origin_nginx_conf "$ORIGIN" > "$work/nginx.conf"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"
# Over HTTP/2 both proxies terminate TLS (ALPN h2) on the counted port.
tls_bind=""
g_protocol=http
gantry_tls=""
if [ "$HTTP" = h2 ]; then
  tls_bind=" ssl crt $work/haproxy.pem alpn h2"
  g_protocol=https
  gantry_tls=", tls: { certificates: [{ cert: \"$work/cert.pem\", key: \"$work/key.pem\" }] }"
fi

{ haproxy_conf_head 1; cat <<EOF; } > "$work/haproxy.cfg"
frontend http
  bind 127.0.0.1:$H_HTTP$tls_bind
  option forwardfor
  default_backend origin
backend origin
  server o 127.0.0.1:$ORIGIN
EOF

{ gantry_conf_head "$ADMIN"; cat <<EOF; } > "$work/gantry.yaml"
      - { name: http, port: $G_HTTP, protocol: $g_protocol, backends: ["127.0.0.1:$ORIGIN"], balancer: { policy: "native:round-robin" }$gantry_tls }
      # The default balancer, builtin:round-robin: a Wasm plugin called per request.
      - { name: http-wasm, port: $G_WASM, protocol: $g_protocol, backends: ["127.0.0.1:$ORIGIN"]$gantry_tls }
EOF

nginx -c "$work/nginx.conf" & pids+=($!)
wait_port "$ORIGIN"

# Instructions per request of the process under callgrind listening on port $2 (label $1).
count() {
  local label=$1 port=$2; shift 2
  local out="$work/callgrind.$label"
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$@" >"$work/$label.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  # Warm-up: connections, pools and lazily built state exist before counting starts.
  h2load "${load[@]}" -n 2000 -c "$CONNECTIONS" "$scheme://127.0.0.1:$port/" >/dev/null
  callgrind_control --zero "$pid" >/dev/null 2>&1
  local succeeded
  succeeded=$(h2load "${load[@]}" -n "$REQUESTS" -c "$CONNECTIONS" "$scheme://127.0.0.1:$port/" | sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p')
  callgrind_control --dump="$label" "$pid" >/dev/null 2>&1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local instructions
  # The dump asked for above (not the one valgrind writes at exit).
  instructions=$(grep -l "^desc: Trigger: dump" "$out".* | head -1 \
    | xargs sed -n 's/^\(summary\|totals\): \([0-9]*\).*/\2/p' | head -1)
  if [ -z "$instructions" ] || [ "${succeeded:-0}" -ne "$REQUESTS" ]; then
    echo "$label: counting failed (succeeded: ${succeeded:-?} of $REQUESTS)" >&2
    exit 1
  fi
  if [ -n "${PROFILES:-}" ]; then
    mkdir -p "$PROFILES"
    cp "$(grep -l "^desc: Trigger: dump" "$out".* | head -1)" "$PROFILES/$label.callgrind"
  fi
  echo "$label $((instructions / REQUESTS))"
}

echo "$(date -u +%Y-%m-%d) $(haproxy -v | head -1 | cut -d' ' -f1-3); h2load ${load[*]} -n $REQUESTS -c $CONNECTIONS ($scheme); instructions per request (callgrind Ir)"
haproxy_ir=$(count haproxy "$H_HTTP" haproxy -f "$work/haproxy.cfg" -db)
gantry_ir=$(count gantry "$G_HTTP" "$GANTRY" --log-level warn run --config "$work/gantry.yaml")
wasm_ir=$(count gantry-wasm "$G_WASM" "$GANTRY" --log-level warn run --config "$work/gantry.yaml")
echo "$haproxy_ir"
echo "$gantry_ir  (native:round-robin)"
echo "$wasm_ir  (builtin:round-robin, the default)"
python3 - "${haproxy_ir#* }" "${gantry_ir#* }" "${wasm_ir#* }" <<'EOF'
import sys
h, g, w = (int(v) for v in sys.argv[1:])
print(f"gantry / haproxy: x{g / h:.2f} instructions per request (native balancer), x{w / h:.2f} (Wasm balancer)")
EOF
