#!/bin/sh
# Redis as the public image runs it: listening on every address of the container without
# protected mode (the container network is the boundary), as the redis user.
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --bind 0.0.0.0 --protected-mode no "$@"
fi
exec "$@"
