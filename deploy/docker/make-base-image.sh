#!/usr/bin/env bash
# Makes a local stand-in for python:3.11-slim when no registry image can be pulled: a minimal Debian bookworm
# root (its python3 is 3.11) built with debootstrap from the machine's own apt mirror, cached as a tarball under
# $SPEC_SIDECAR_CACHE/docker, then `docker import`ed as spec-sidecar-base:bookworm. Idempotent.
# Needs root, debootstrap, and a running Docker engine (DOCKER_HOST may point at one).
set -euo pipefail
CACHE="${SPEC_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spec-sidecar}/docker"
IMAGE="${BASE_IMAGE_TAG:-spec-sidecar-base:bookworm}"
TARBALL="$CACHE/bookworm-python3-minbase-v3.tar"
mkdir -p "$CACHE"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then echo "$IMAGE"; exit 0; fi

if [ ! -f "$TARBALL" ]; then
  # The mirror comes from the machine's apt configuration, so no host is written down here.
  MIRROR="$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)"
  [ -n "$MIRROR" ] || { echo "make-base-image: no Debian mirror in the apt configuration" >&2; exit 1; }
  ROOTFS="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$ROOTFS"' EXIT
  chmod 0755 "$ROOTFS"  # it becomes the image's /, which every user must be able to enter
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" >&2
  # Trust what this machine trusts: where TLS to the package registries passes through a local CA, builds in
  # the image must verify it too. This image is a local test stand-in and is never published.
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  fi
  # Keep the image small, as the slim images do: no apt lists, docs or caches.
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
  tar -C "$ROOTFS" -cf "$TARBALL.partial" .
  mv "$TARBALL.partial" "$TARBALL"
fi

# An imported tarball has no environment: set what a python image sets. pip verifies with its own CA bundle
# unless told otherwise.
docker import --change 'CMD ["/usr/bin/python3"]' --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' "$TARBALL" "$IMAGE" >&2
echo "$IMAGE"
