#!/usr/bin/env bash
# Runs the Videocall fleet on this machine against local PostgreSQL and RabbitMQ, setting up
# whatever is missing. Ctrl-C stops everything. Settings come from the environment (see
# docs/operations.md); development defaults are filled in below.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_rust
ensure_postgres
ensure_redis
ensure_rabbitmq

db_user="${PGUSER:-$(id -un)}"
if ! psql -h 127.0.0.1 -U "$db_user" -d postgres -Atc "select 1 from pg_database where datname='videocall'" | grep -q 1; then
  log "creating database videocall"
  psql -h 127.0.0.1 -U "$db_user" -d postgres -qc 'CREATE DATABASE videocall'
fi

export DATABASE_URL="${DATABASE_URL:-postgres://$db_user@127.0.0.1:5432/videocall}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export GRPC_LISTEN_ADDR="${GRPC_LISTEN_ADDR:-127.0.0.1:50051}"
export STUN_SERVERS="${STUN_SERVERS:-stun:127.0.0.1:3478}"
export GRPC_REFLECTION="${GRPC_REFLECTION:-true}"  # grpcurl without the .proto, on this machine
# Data outside the checkout: the token keys and the recordings.
state="${VIDEOCALL_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/videocall}"
mkdir -p "$state"

log "building"
cargo build --locked --workspace --bins

bins="$CARGO_TARGET_DIR/debug"
# Tokens: EdDSA. The services get only the public keys; vc-token signs with the private one.
if [ -z "${JWT_PUBLIC_KEYS:-}${JWT_SECRET:-}" ]; then
  [ -f "$state/keys/signing-key.jwk" ] || "$bins/vc-token" keygen "$state/keys" >/dev/null
  export JWT_PUBLIC_KEYS="$state/keys/jwks.json"
  signing="JWT_SIGNING_KEY=$state/keys/signing-key.jwk"
else
  signing="JWT_SIGNING_KEY=<the issuer's key>"
fi
pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait || true; }
trap stop EXIT INT TERM

"$bins/api-gateway" & pids+=($!)
"$bins/missed-call-sweeper" & pids+=($!)
"$bins/event-consumer" & pids+=($!)
"$bins/quality-aggregator" & pids+=($!)
RECORDINGS_DIR="${RECORDINGS_DIR:-$state/recordings}" RECORDER_CANDIDATE_NETWORKS="${RECORDER_CANDIDATE_NETWORKS:-127.0.0.1}" \
  OPS_LISTEN_ADDR="${RECORDER_OPS_ADDR:-127.0.0.1:9094}" "$bins/call-recorder" & pids+=($!)
HTTP_LISTEN_ADDR="${HTTP_LISTEN_ADDR:-127.0.0.1:8080}" GATEWAY_URL="http://$GRPC_LISTEN_ADDR" \
  OPS_LISTEN_ADDR="${RELAY_OPS_ADDR:-127.0.0.1:9095}" "$bins/signaling-relay" & pids+=($!)

cat >&2 <<MSG
==> Videocall is starting: gRPC on $GRPC_LISTEN_ADDR (health, reflection, videocall.v1.CallService),
    WebSocket signaling on ws://${HTTP_LISTEN_ADDR:-127.0.0.1:8080}/ws?token=... (docs/protocol.md)
    A token for a user:   $signing $bins/vc-token alice user
    Events go to the RabbitMQ topic exchange videocall.events. Ctrl-C stops.
MSG
wait -n "${pids[@]}"
