#!/usr/bin/env bash
# Runs every test of the workspace against real PostgreSQL, Redis and RabbitMQ, setting up
# whatever is missing first. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_rust
ensure_postgres
ensure_redis
ensure_rabbitmq
# The WebRTC tests run a real coturn (Debian's package; installing it starts no daemon).
command -v turnserver >/dev/null || apt_install coturn
# The web client's end-to-end test runs Debian's headless Chromium with a fake camera.
command -v chromium >/dev/null || apt_install chromium
# The alert rules' unit tests and the scrape test run Debian's Prometheus (with promtool).
command -v promtool >/dev/null || apt_install prometheus

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://$(id -un)@127.0.0.1:5432/postgres}"
export TEST_AMQP_URL="${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

# Databases left by earlier runs (each test makes its own).
stale=$(psql "$TEST_DATABASE_URL" -Atc "select datname from pg_database where datname like 'vc_test_%'" 2>/dev/null || true)
for db in $stale; do psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done

# Quorum queues an interrupted run left behind (the tests delete those they make): one RabbitMQ
# node slows down and then stops answering under hundreds of them (docs/operations.md, Queue types).
if command -v rabbitmqctl >/dev/null; then
  for q in $(rabbitmqctl -q list_queues name type 2>/dev/null | awk '$2 == "quorum" && $1 ~ /^test\./ {print $1}'); do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
fi

log "alert rules: promtool check rules, promtool test rules"
promtool check rules docker/prometheus/alerts.yml
promtool test rules docker/prometheus/alerts.test.yml

log "building (target dir: $CARGO_TARGET_DIR)"
cargo build --workspace --all-targets --locked
log "running the tests"
cargo test --workspace --locked "$@"

# The signaling suites once more, on a Redis Cluster (3 masters + 3 replicas) of their own:
# the relay's and the gateway's (signal streams, call states). The bus' own cluster tests (one
# shard per signal, failover, reshard) ran above with clusters of their own. Skipped when extra
# arguments narrowed the run.
if [[ $# -eq 0 ]]; then
  cluster_dir=$(mktemp -d /tmp/vc-redis-cluster.XXXXXX)
  trap 'scripts/redis-cluster.sh stop "$cluster_dir"' EXIT
  log "starting a Redis Cluster for the cluster suite"
  TEST_REDIS_URL=$(scripts/redis-cluster.sh start "$cluster_dir")
  export TEST_REDIS_URL
  log "signaling suites on the Redis Cluster ($TEST_REDIS_URL)"
  # (turn_hardening talks to coturn alone: no signal bus in it.)
  cargo test --locked -p signaling-relay --test relay -- --skip turn_hardening
  # The one gateway test that counts PUBSUB subscribers of one Redis server is single-server only.
  cargo test --locked -p api-gateway --test api -- --skip every_signal_stream_of_a_gateway_shares_one_bus_subscriber
fi
