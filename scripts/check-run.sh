#!/usr/bin/env bash
# Starts the fleet as an operator does, with scripts/run.sh (its state in a temporary directory),
# waits until every service's /readyz answers ready, then stops it with SIGTERM (run.sh passes it
# on) and checks that everything exited. Run by CI after the tests, on ports they do not use.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
command -v curl >/dev/null || apt_install curl

state=$(mktemp -d)
output="$state/run.log"
VIDEOCALL_STATE_DIR="$state" setsid scripts/run.sh >"$output" 2>&1 &
pid=$!
finish() {
  kill -TERM -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$state"
}
trap finish EXIT

ready() { curl -fsS --max-time 2 "http://$1/readyz" >/dev/null; }
for addr in 127.0.0.1:9090 127.0.0.1:9091 127.0.0.1:9092 127.0.0.1:9093 127.0.0.1:9094 127.0.0.1:9095 127.0.0.1:8080; do
  if ! wait_for "the service with /readyz on $addr" 300 ready "$addr"; then
    tail -n 40 "$output" >&2
    exit 1
  fi
done
log "scripts/run.sh: api-gateway, missed-call-sweeper, event-consumer, quality-aggregator, call-recorder and signaling-relay are ready"
