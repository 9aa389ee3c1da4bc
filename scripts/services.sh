#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis and RabbitMQ run on loopback, installing them from Debian's
# packages when they are missing. Sourced by scripts/test.sh and scripts/run.sh.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $* from Debian's packages"
  if [ -z "${VIDEOCALL_APT_UPDATED:-}" ]; then
    as_root apt-get update -qq
    export VIDEOCALL_APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # description, attempts, command...
  local what=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "$what did not come up"; return 1
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; fi
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    log "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
    wait_for PostgreSQL 30 pg_isready -h 127.0.0.1 -p 5432 -q
  fi
  # The tests and the run command connect as the current OS user over trust or password auth.
  if ! psql -h 127.0.0.1 -U "${PGUSER:-$(id -un)}" -d postgres -Atc 'select 1' >/dev/null 2>&1; then
    log "creating PostgreSQL role $(id -un)"
    as_root su postgres -c "psql -qc \"CREATE ROLE \\\"$(id -un)\\\" SUPERUSER LOGIN\"" || true
  fi
}

ensure_redis() {
  if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    wait_for Redis 15 redis-cli -h 127.0.0.1 -p 6379 ping
  fi
}

rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

ensure_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null; then apt_install rabbitmq-server; fi
  if ! rabbit_up; then
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached || true
    wait_for RabbitMQ 90 rabbit_up
  fi
}

ensure_rust() {
  if ! command -v cargo >/dev/null; then
    log "cargo is missing: install Rust with rustup (https://rustup.rs) or Debian's cargo package"
    exit 1
  fi
}

# One target directory for every checkout of this project on the machine: builds are slow on small
# machines, and a fresh clone (as CI makes) then reuses what the last build compiled.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/videocall/target}"
