#!/usr/bin/env bash
# A throwaway Redis Cluster on loopback for the cluster test suite: Debian's redis-server, 3
# masters + 3 replicas, no persistence, in its own directory.
#   scripts/redis-cluster.sh start DIR   starts it, prints the REDIS_URL (comma-separated seeds)
#   scripts/redis-cluster.sh stop DIR    kills its nodes and removes DIR
set -euo pipefail

command=${1:?start|stop}
dir=${2:?directory for the nodes}

case "$command" in
start)
  mkdir -p "$dir"
  ports=()
  while ((${#ports[@]} < 6)); do
    # A port whose cluster bus port (+10000) is free too; a node that fails to start (the port
    # was taken meanwhile) is replaced by another.
    port=$((20000 + RANDOM % 30000))
    if ss -Hltn "( sport = :$port or sport = :$((port + 10000)) )" | grep -q .; then continue; fi
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes --cluster-node-timeout 1000 \
      --cluster-config-file "nodes-$port.conf" --dir "$dir" --save "" --appendonly no \
      --daemonize yes --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log"
    up=""
    for _ in $(seq 50); do
      if [[ "$(redis-cli -p "$port" ping 2>/dev/null)" == PONG ]]; then up=1; break; fi
      sleep 0.1
    done
    if [[ -n "$up" ]]; then ports+=("$port"); else rm -f "$dir/redis-$port.pid"; fi
  done
  nodes=()
  for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log"
  for _ in $(seq 300); do
    ok=1
    for port in "${ports[@]}"; do
      redis-cli -p "$port" cluster info | grep -q "cluster_state:ok" || ok=""
      # A replica that never finished its first sync could not take over.
      if redis-cli -p "$port" info replication | grep -q "role:slave"; then
        redis-cli -p "$port" info replication | grep -q "master_link_status:up" || ok=""
      fi
    done
    [[ -n "$ok" ]] && break
    sleep 0.1
  done
  [[ -n "$ok" ]] || { echo "the cluster did not become healthy" >&2; exit 1; }
  url=""
  for port in "${ports[@]}"; do url+="${url:+,}redis://127.0.0.1:$port"; done
  echo "$url"
  ;;
stop)
  for pidfile in "$dir"/redis-*.pid; do
    [[ -e "$pidfile" ]] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
