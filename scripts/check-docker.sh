#!/usr/bin/env bash
# Checks the container set-up for real.
#   scripts/check-docker.sh            static check, then the images and the compose fleet with podman
#   scripts/check-docker.sh --static   only the static check
# Static: Debian's docker-compose (1.29) parses and resolves docker/compose.yaml (that version
# predates the top-level `name:` key, so it reads a copy without it).
# Containers (no Docker engine and no registry here; podman and Debian's packages instead): builds
# the Videocall image from the host's binaries (docker/Dockerfile, BINARIES=prebuilt) and the
# infrastructure images from Debian's packages (docker/infra.Dockerfile) on a debootstrap base;
# brings docker/compose.yaml up with podman-compose (PostgreSQL, Redis, RabbitMQ, coturn, the token
# and schema jobs, every service, two relays); runs `loadgen smoke` against the containers (every
# /readyz ready, a call over gRPC with its signals crossing the two relays over WebSocket, the
# events read from RabbitMQ, one relay container restarted and the call repeated through it);
# takes it all down.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

command -v docker-compose >/dev/null || apt_install docker-compose
copy=$(mktemp --suffix=.yaml)
trap 'rm -f "$copy"' EXIT
grep -v '^name:' docker/compose.yaml > "$copy"
resolved=$(TURN_SECRET=check-only-turn-secret docker-compose -f "$copy" --project-directory docker config)
for service in token-keys migrate api-gateway signaling-relay event-consumer quality-aggregator missed-call-sweeper call-recorder coturn postgres redis rabbitmq; do
  grep -q "^  $service:" <<<"$resolved" || { echo "compose: service $service missing" >&2; exit 1; }
done
log "docker/compose.yaml resolves ($(grep -c '^  [a-z-]*:$' <<<"$resolved") services)"
# The monitoring overlay (Prometheus, Grafana) on top: it resolves too, with the files it mounts.
resolved=$(TURN_SECRET=check-only-turn-secret docker-compose -f "$copy" -f docker/compose.observability.yaml --project-directory docker config)
for service in prometheus grafana; do
  grep -q "^  $service:" <<<"$resolved" || { echo "compose.observability: service $service missing" >&2; exit 1; }
done
for file in docker/prometheus/prometheus.yml docker/prometheus/alerts.yml docker/grafana/videocall.json \
  docker/grafana/provisioning/datasources/prometheus.yml docker/grafana/provisioning/dashboards/videocall.yml; do
  [ -s "$file" ] || { echo "$file is missing" >&2; exit 1; }
done
log "docker/compose.observability.yaml resolves on top of it"
[ "${1:-}" = --static ] && exit 0

source scripts/podman.sh
ensure_rust
ensure_podman
ensure_base_image
base=localhost/debian:bookworm-slim
project=vcsmoke
work=$(mktemp -d)
compose() { podman-compose -p "$project" -f docker/compose.yaml "$@"; }
finish() {
  local status=$?
  if [ "$status" != 0 ]; then
    log "the container check failed; the containers' last lines:"
    for c in $(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}'); do
      echo "--- $c" >&2; podman logs --tail 15 "$c" >&2 2>&1 || true
    done
  fi
  if [ "$status" != 0 ] && [ -n "${KEEP_FLEET:-}" ]; then
    log "KEEP_FLEET is set: the containers stay up (podman-compose -p $project -f docker/compose.yaml down -v)"
    exit "$status"
  fi
  compose down -v >/dev/null 2>&1 || true
  podman rm -f "${project}_coturn_1" >/dev/null 2>&1 || true
  podman volume ls -q --filter "label=io.podman.compose.project=$project" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
  rm -rf "$work" "$copy"
  exit "$status"
}
trap finish EXIT

log "building the binaries"
cargo build --locked --workspace --bins
mkdir -p "$work/context/prebuilt"
for bin in api-gateway signaling-relay event-consumer quality-aggregator missed-call-sweeper call-recorder vc-token vc-migrate videocall; do
  strip --strip-debug -o "$work/context/prebuilt/$bin" "$CARGO_TARGET_DIR/debug/$bin"
done
log "building localhost/videocall:dev (docker/Dockerfile with BINARIES=prebuilt, BASE_IMAGE=$base)"
podman build -q -f docker/Dockerfile --build-arg BINARIES=prebuilt --build-arg "BASE_IMAGE=$base" \
  -t localhost/videocall:dev "$work/context" >/dev/null
# Built once per version of their recipe (the tag is its hash), then kept by podman.
infra_tag=$(cat docker/infra.Dockerfile docker/infra/* | sha256sum | cut -c1-12)
for target in postgres redis rabbitmq coturn; do
  if ! podman image exists "localhost/videocall-$target:$infra_tag"; then
    log "building localhost/videocall-$target:$infra_tag from Debian's packages (docker/infra.Dockerfile)"
    podman build -q -f docker/infra.Dockerfile --target "$target" --build-arg "BASE_IMAGE=$base" \
      -t "localhost/videocall-$target:$infra_tag" docker >/dev/null
  fi
done

# A TLS certificate for coturn's turns: listener (self-signed, this run only).
mkdir -p "$work/tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout "$work/tls/key.pem" \
  -out "$work/tls/cert.pem" >/dev/null 2>&1
chmod 644 "$work/tls/"*.pem

# The host's address: coturn runs on the host's network, and the recorder announces it.
host_ip=$(hostname -I | awk '{print $1}')
# podman-compose 1.0 leaves `${VAR:-}` (an empty default) unsubstituted, so every such variable
# of docker/compose.yaml gets a value here (docs/operations.md, "Containers").
export STUN_SERVERS="stun:$host_ip:3478" \
  TURN_SERVER="turn:$host_ip:3478?transport=udp,turn:$host_ip:3478?transport=tcp,turns:localhost:443?transport=tcp" \
  RECORDER_NAT_1TO1_IPS="$host_ip" ALLOWED_ORIGINS="http://localhost:8080"
export POSTGRES_IMAGE="localhost/videocall-postgres:$infra_tag" REDIS_IMAGE="localhost/videocall-redis:$infra_tag" \
  RABBITMQ_IMAGE="localhost/videocall-rabbitmq:$infra_tag" COTURN_IMAGE="localhost/videocall-coturn:$infra_tag" \
  VIDEOCALL_IMAGE=localhost/videocall:dev RELAY_REPLICAS=2 RELAY_HOST_PORTS=127.0.0.1: \
  TURN_TLS_DIR="$work/tls" TURN_SECRET="$(openssl rand -hex 32)"
compose down -v >/dev/null 2>&1 || true  # what an interrupted run left
podman rm -f "${project}_coturn_1" >/dev/null 2>&1 || true
# podman-compose 1.0 adds its network to every container, which podman refuses for coturn's
# `network_mode: host`; so coturn starts with `podman run` and the compose file's own settings.
log "coturn (host network): podman run with docker/compose.yaml's settings"
podman run -d --name "${project}_coturn_1" --label "io.podman.compose.project=$project" --network host \
  -v "$PWD/docker/coturn/turnserver.conf:/etc/coturn/turnserver.conf:ro" -v "$TURN_TLS_DIR:/etc/coturn/tls:ro" \
  "$COTURN_IMAGE" -c /etc/coturn/turnserver.conf "--static-auth-secret=$TURN_SECRET" >/dev/null
services=$(grep -oE '^  [a-z-]+:$' docker/compose.yaml | tr -d ' :' | grep -vx -e coturn -e token-issuer)
log "podman-compose up (project $project): $(echo $services)"
compose up -d $services >"$work/up.log" 2>&1 || { tail -n 30 "$work/up.log" >&2; exit 1; }
# (podman-compose looks each volume up before making it: those "no such volume" lines are expected)
if grep '^Error' "$work/up.log" | grep -v 'no such volume' >&2; then exit 1; fi
podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}\t{{.Image}}\t{{.Status}}'
command -v turnutils_stunclient >/dev/null || apt_install coturn
wait_for "coturn's STUN on 3478" 30 turnutils_stunclient 127.0.0.1
wait_for "coturn's TLS listener on 443" 30 sh -c 'openssl s_client -connect 127.0.0.1:443 </dev/null 2>/dev/null | grep -q "BEGIN CERTIFICATE"'
log "coturn answers STUN on 3478 and TLS on 443"

ip_of() { podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${project}_$1"; }
# Workers by their address on the compose network; relays by their published loopback port,
# which stays when the container restarts (its network address does not).
gateway=$(ip_of api-gateway_1)
rabbit=$(ip_of rabbitmq_1)
relay1=$(podman port "${project}_signaling-relay_1" 8080 | head -n1)
relay2=$(podman port "${project}_signaling-relay_2" 8080 | head -n1)

log "minting tokens with the token-issuer (vc-token in a container, the private key in its volume)"
token() {
  for _ in $(seq 60); do
    if out=$(podman run --rm -v "${project}_token-private:/keys/private:ro" -e JWT_SIGNING_KEY=/keys/private/signing-key.jwk \
      --entrypoint vc-token localhost/videocall:dev "$@" 2>/dev/null); then echo "$out"; return 0; fi
    sleep 1
  done
  log "vc-token could not mint a token"; return 1
}
caller_token=$(token smoke-customer user 600)
callee_token=$(token smoke-agent agent 600)

SMOKE_CALLER_TOKEN="$caller_token" SMOKE_CALLEE_TOKEN="$callee_token" "$CARGO_TARGET_DIR/debug/loadgen" smoke \
  --grpc "http://$gateway:50051" --relay "ws://$relay1" --relay "ws://$relay2" \
  --ready "$gateway:9090" --ready "$(ip_of missed-call-sweeper_1):9091" --ready "$(ip_of event-consumer_1):9092" \
  --ready "$(ip_of quality-aggregator_1):9093" --ready "$(ip_of call-recorder_1):9094" \
  --ready "$relay1" --ready "$relay2" --ready "$(ip_of signaling-relay_2):9095" \
  --amqp "amqp://videocall:videocall@$rabbit:5672/%2f" --callee-id smoke-agent --gateway-ops "$gateway:9090" \
  --restart-relay "podman restart ${project}_signaling-relay_1 >/dev/null"
podman ps --filter "label=io.podman.compose.project=$project" --format '{{.Names}}\t{{.Status}}'
log "the compose fleet in containers passed the smoke test"
