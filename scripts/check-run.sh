#!/usr/bin/env bash
# Starts the fleet as an operator does, with scripts/run.sh (its state in a temporary directory),
# waits until every service's /readyz answers ready, then stops it with SIGTERM (run.sh passes it
# on) and checks that everything exited. Run by CI before the tests, on ports they do not use.
# --fresh-target: as on a new machine, with an empty cache directory (so run.sh's target dir,
# ~/.cache/videocall/target there, does not exist and everything is built from nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
command -v curl >/dev/null || apt_install curl

state=$(mktemp -d)
output="$state/run.log"
if [ "${1:-}" = --fresh-target ]; then
  log "scripts/run.sh with an empty cache directory ($state/cache): it builds every binary first"
  VIDEOCALL_STATE_DIR="$state" XDG_CACHE_HOME="$state/cache" setsid env -u CARGO_TARGET_DIR scripts/run.sh >"$output" 2>&1 &
else
  VIDEOCALL_STATE_DIR="$state" setsid scripts/run.sh >"$output" 2>&1 &
fi
pid=$!
finish() {
  kill -TERM -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$state"
}
trap finish EXIT

started=$SECONDS
# Ready, or run.sh gave up (a failed build, say): then stop waiting at once.
ready_or_gone() { curl -fsS --max-time 2 "http://$1/readyz" >/dev/null || ! kill -0 "$pid" 2>/dev/null; }
for addr in 127.0.0.1:9090 127.0.0.1:9091 127.0.0.1:9092 127.0.0.1:9093 127.0.0.1:9094 127.0.0.1:9095 127.0.0.1:8080; do
  if ! wait_for "the service with /readyz on $addr" 1200 ready_or_gone "$addr" || ! kill -0 "$pid" 2>/dev/null; then
    log "scripts/run.sh did not bring up /readyz on $addr; its last lines:"
    tail -n 40 "$output" >&2
    exit 1
  fi
done
if [ "${1:-}" = --fresh-target ]; then
  log "built from an empty target directory and ready in $((SECONDS - started)) s"
fi
log "scripts/run.sh: api-gateway, missed-call-sweeper, event-consumer, quality-aggregator, call-recorder and signaling-relay are ready"
