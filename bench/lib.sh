# shellcheck shell=bash
# What the benchmark scripts share; sourced, not run. Gives a scratch folder `$work`, a list
# `pids` of background processes stopped (with the folder removed) when the script exits,
# `free_port`, `wait_port`, and the configuration heads the comparisons share.

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Five seconds to exit on SIGTERM (pingora's graceful shutdown would take a minute), then
  # SIGKILL.
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Installs these Debian packages.
install_packages() {
  echo "installing $*" >&2
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# Installs from Debian what is missing: each argument is COMMAND:PACKAGE, the package that
# provides the command.
install_missing() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ "${#missing[@]}" -eq 0 ] || install_packages "${missing[@]}"
}

# The path of COMMAND from the pinned PyPI PACKAGE (`name==version`), installed the first time
# in a virtual environment of its own under ~/.cache/gantry-ci.
python_tool() {
  local command=$1 package=$2
  local venv=${XDG_CACHE_HOME:-$HOME/.cache}/gantry-ci/${package//=/-}
  if [ ! -x "$venv/bin/$command" ]; then
    install_missing python3:python3
    if ! python3 -m venv "$venv" 2>/dev/null; then
      install_packages python3-venv # Debian ships venv apart from python3
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q "$package" >&2
  fi
  echo "$venv/bin/$command"
}

# Whether the built file $1 exists and no file under the other arguments (sources: folders
# or files; compiled Python caches aside) is newer: what the plugin build scripts skip.
up_to_date() {
  local built=$1; shift
  [ -f "$built" ] && [ -z "$(find "$@" -newer "$built" -type f -not -path '*/__pycache__/*' | head -1)" ]
}

# A TCP port free on 127.0.0.1 now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (10 s at most) until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

# An nginx configuration (one worker, no logs) for an origin on 127.0.0.1:$1 that answers
# every request with a 22-byte body; with $2, also an h2c origin (prior knowledge) there that
# answers gRPC-shaped: content type application/grpc and a `grpc-status: 0` trailer.
origin_nginx_conf() {
  cat <<CONF
worker_processes 1;
daemon off;
pid $work/nginx/pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$1;
    location / { return 200 "hello from the origin\n"; }
  }
$(if [ -n "${2:-}" ]; then cat <<H2C
  # h2c by prior knowledge: the gRPC-shaped backend (a message, then grpc-status trailers).
  server {
    listen 127.0.0.1:$2 http2;
    location / {
      default_type application/grpc;
      add_trailer grpc-status 0;
      return 200 "hello from the h2c origin";
    }
  }
H2C
fi)
}
CONF
}

# The head of a HAProxy configuration with ${1:-1} threads; frontends and backends follow.
haproxy_conf_head() {
  cat <<CONF
global
  nbthread ${1:-1}
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
CONF
}

# The head of a Gantry configuration with its admin endpoint on 127.0.0.1:$1, ${2:-1} worker
# threads and one service, `bench`, on 127.0.0.1; its ports follow, indented under `ports:`.
gantry_conf_head() {
  cat <<CONF
admin: { listen: "127.0.0.1:$1" }
runtime: { workers: ${2:-1} }
services:
  - name: bench
    address: 127.0.0.1
    ports:
CONF
}
