#!/usr/bin/env bash
# Set up what the image test (tests/test_image.py, marker `image`) needs: buildah, and a local stand-in for
# Home Assistant's Python base image, tagged $OCPP_IMAGE_BASE (default localhost/ocpp-addon-base:bookworm).
#
#   bash scripts/image_base.sh
#
# No container registry is reachable on our machines, so the real base (ghcr.io/home-assistant/base-python,
# Alpine) cannot be pulled. The stand-in is made from Debian packages and behaves like that base where the
# app's Dockerfile relies on it: python3 with pip allowed system-wide (Debian's EXTERNALLY-MANAGED marker is
# removed, as the Python base image has none) and CA certificates. It carries this machine's CA bundle,
# because the registries are reached through a TLS-inspecting proxy; that belongs here, never in the
# project's Dockerfile. The Dockerfile itself is built unchanged on it by the test.
#
# Cached: the debootstrap rootfs (a tarball, ~2 min to make) under ${XDG_CACHE_HOME:-~/.cache}/ocpp_addon/,
# keyed by its recipe; the stand-in image in buildah's storage, labelled with a hash of its inputs. Either is
# rebuilt when missing or when its inputs change.
set -euo pipefail

SUITE=bookworm
INCLUDE=python3,python3-pip,python3-venv,ca-certificates
CACHE="${OCPP_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ocpp_addon/image-base}"
TAG="${OCPP_IMAGE_BASE:-localhost/ocpp-addon-base:$SUITE}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
BUILDAH=(buildah --storage-driver vfs)

log() { echo "image_base: $*" >&2; }

# ---- tools ----------------------------------------------------------------------------------------------
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
    if [[ "$(id -u)" -ne 0 ]]; then
        log "ERROR: ${missing[*]} missing and not root: apt-get install -y ${missing[*]}"
        exit 2
    fi
    log "installing ${missing[*]} (Debian packages)"
    apt-get update -qq -o DPkg::Lock::Timeout=600
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# ---- the base rootfs ------------------------------------------------------------------------------------
RECIPE="debootstrap --variant=minbase --include=$INCLUDE $SUITE; no EXTERNALLY-MANAGED"
KEY="$(printf '%s' "$RECIPE" | sha256sum | cut -c1-12)"
ROOTFS_TGZ="$CACHE/rootfs-$SUITE-$KEY.tgz"
mkdir -p "$CACHE"
if [[ -s "$ROOTFS_TGZ" ]]; then
    log "rootfs cached: $ROOTFS_TGZ"
else
    log "making the $SUITE rootfs with debootstrap (about 2 minutes)"
    work="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" >"$work/debootstrap.log" 2>&1; then
        tail -n 20 "$work/debootstrap.log" >&2
        log "ERROR: debootstrap failed (log above)"
        exit 2
    fi
    rm -f "$work"/root/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/*
    tar -C "$work/root" --numeric-owner -czf "$work/rootfs.tgz" .
    rm -f "$CACHE"/rootfs-"$SUITE"-*.tgz   # older recipes
    mv "$work/rootfs.tgz" "$ROOTFS_TGZ"
    rm -rf "$work"
    trap - EXIT
    log "rootfs made: $ROOTFS_TGZ ($(du -h "$ROOTFS_TGZ" | cut -f1))"
fi

# ---- the stand-in image ---------------------------------------------------------------------------------
INPUTS="$( (sha256sum "$ROOTFS_TGZ" | cut -c1-64; sha256sum "$HOST_CA" | cut -c1-64) | sha256sum | cut -c1-16)"
have="$("${BUILDAH[@]}" inspect --type image --format '{{index .ImageAnnotations "ocpp_addon.inputs"}}{{index .Docker.Config.Labels "ocpp_addon.inputs"}}' "$TAG" 2>/dev/null || true)"
if [[ "$have" == *"$INPUTS"* ]]; then
    log "stand-in image up to date: $TAG"
else
    log "building the stand-in image $TAG"
    ctx="$(mktemp -d)"
    trap 'rm -rf "$ctx"' EXIT
    ln "$ROOTFS_TGZ" "$ctx/rootfs.tgz" 2>/dev/null || cp "$ROOTFS_TGZ" "$ctx/rootfs.tgz"
    cp "$HOST_CA" "$ctx/ca-certificates.crt"
    cat >"$ctx/Containerfile" <<EOF
FROM scratch
ADD rootfs.tgz /
# This machine's CA bundle: pip in the app's Dockerfile reaches PyPI through a TLS-inspecting proxy.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
LABEL ocpp_addon.inputs="$INPUTS"
ENV LANG=C.UTF-8
CMD ["/bin/bash"]
EOF
    "${BUILDAH[@]}" bud --quiet --isolation chroot --format docker --layers=false -t "$TAG" "$ctx" >/dev/null
    rm -rf "$ctx"
    trap - EXIT
    # Images left untagged by earlier stand-ins only take room (vfs stores every layer in full).
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
    log "stand-in image built: $TAG"
fi
echo "$TAG"
