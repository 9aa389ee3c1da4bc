#!/usr/bin/env bash
# Podman set-up for building and running the images on a machine with no Docker engine and no image
# registry (this project's CI machine): Debian's podman, runc, podman-compose and debootstrap; a
# containers.conf for VMs where crun and setrlimit fail; a Debian base image made with debootstrap.
# Sourced by scripts/check-docker.sh; scripts/services.sh must be sourced first.

podman_state="${XDG_CACHE_HOME:-$HOME/.cache}/videocall/podman"

ensure_podman() {
  for tool in podman runc podman-compose debootstrap openssl; do
    if ! command -v "$tool" >/dev/null; then
      apt_install podman runc podman-compose debootstrap openssl
      break
    fi
  done
  # crun fails here ("cgroups in hybrid mode not supported") and setrlimit is not permitted in
  # this VM, so: runc, cgroupfs, no default ulimits. podman-compose runs plain `podman`, which
  # reads these from CONTAINERS_CONF.
  mkdir -p "$podman_state"
  if [ -z "${CONTAINERS_CONF:-}" ]; then
    cat >"$podman_state/containers.conf" <<'CONF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
    export CONTAINERS_CONF="$podman_state/containers.conf"
  fi
}

# The Debian mirror apt already uses here (no image registry is reachable, Debian's mirror is).
debian_mirror() {
  local uri
  uri=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -v security | head -n1 | awk '{print $2}')
  echo "${uri:-http://deb.debian.org/debian}"
}

# localhost/debian:bookworm-slim, made once with debootstrap (about a minute) and kept by podman.
ensure_base_image() {
  local image=localhost/debian:bookworm-slim
  if podman image exists "$image"; then return 0; fi
  local rootfs
  rootfs=$(mktemp -d)
  log "making $image with debootstrap from $(debian_mirror)"
  as_root debootstrap --variant=minbase bookworm "$rootfs" "$(debian_mirror)" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; return 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import -q - "$image" >/dev/null
  as_root rm -rf "$rootfs" "$rootfs.log"
}
