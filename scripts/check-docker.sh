#!/usr/bin/env bash
# Checks docker/compose.yaml as far as a client can without a Docker engine: Debian's
# docker-compose (1.29, installed when missing) parses and resolves it. That version predates the
# top-level `name:` key, so the check reads a copy without it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
command -v docker-compose >/dev/null || apt_install docker-compose
copy=$(mktemp --suffix=.yaml)
trap 'rm -f "$copy"' EXIT
grep -v '^name:' docker/compose.yaml > "$copy"
resolved=$(TURN_SECRET=check-only-turn-secret docker-compose -f "$copy" --project-directory docker config)
for service in token-keys migrate api-gateway signaling-relay event-consumer quality-aggregator missed-call-sweeper call-recorder coturn; do
  grep -q "^  $service:" <<<"$resolved" || { echo "compose: service $service missing" >&2; exit 1; }
done
log "docker/compose.yaml resolves ($(grep -c '^  [a-z-]*:$' <<<"$resolved") services)"
