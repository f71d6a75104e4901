#!/usr/bin/env bash
# Build deploy/Dockerfile on a machine that has Debian's packages but no Docker Hub, then optionally run a
# command against the image (make test-container runs tests/test_container.py this way):
#
#   bash deploy/build-image.sh [-- COMMAND...]
#
# - installs docker.io and debootstrap with apt when missing (needs root);
# - uses the Docker daemon that answers at $DOCKER_HOST (or the default socket); when none does, starts one of
#   its own (dockerd --bridge=none --iptables=false: no container gets a network of its own, every build and
#   run uses --network host), with its data under $CACHE, and stops it by pid at the end;
# - when the base tag debian:12 is missing, makes it from Debian's packages (debootstrap bookworm from the apt
#   mirror this machine uses, then docker import), so `FROM debian:12` stays what a Docker Hub user builds from;
# - builds the image (BuildKit) at low CPU priority; a CA bundle that this machine's pip is told to trust
#   (PIP_CERT or pip's `cert` setting) goes in as the build secret pip_cert, so pip in the build reaches PyPI
#   the way pip here does;
# - runs COMMAND with DOCKER_HOST, BERT_SQUAD_DOCKER (the CLI) and BERT_SQUAD_IMAGE (the tag) set.
#
# Environment: BERT_SQUAD_IMAGE (tag, default bert-squad:dev), BERT_SQUAD_DOCKER_CACHE (default
# ~/.cache/bert_squad/docker: the daemon's data, so the base image and the build cache persist across runs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${BERT_SQUAD_IMAGE:-bert-squad:dev}"
BASE="debian:12"
SUITE="bookworm"
CACHE="${BERT_SQUAD_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bert_squad/docker}"

say() { echo "build-image: $*"; }
die() {
    echo "build-image: ERROR: $1" >&2
    echo "build-image: fix: $2" >&2
    exit 1
}

COMMAND=()
if [ "${1:-}" = "--" ]; then
    shift
    COMMAND=("$@")
elif [ $# -gt 0 ]; then
    die "unknown argument $1" "usage: bash deploy/build-image.sh [-- COMMAND...]"
fi

# ---------------------------------------------------------------- packages
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "${missing[*]} not installed, and installing needs root" "sudo apt-get install ${missing[*]}"
    say "installing ${missing[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# A CLI that can drive BuildKit: one with the buildx plugin, or a 20.10-or-older one (Debian's docker.io),
# whose builder is built in. Newer CLIs without buildx only have the legacy builder, which lacks build secrets.
pick_cli() {
    local cli major
    while read -r cli; do
        if "$cli" buildx version >/dev/null 2>&1; then echo "$cli"; return 0; fi
        major="$("$cli" --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')"
        if [ -n "$major" ] && [ "$major" -le 20 ]; then echo "$cli"; return 0; fi
    done < <(type -aP docker | awk '!seen[$0]++')
    return 1
}
DOCKER="$(pick_cli)" || die "no docker CLI here can use BuildKit (needs the buildx plugin, or Debian's docker.io)" \
    "install docker-buildx (Docker CE) or Debian's docker.io"

# ---------------------------------------------------------------- daemon
DAEMON_PID="" ROOTFS=""
cleanup() {
    [ -z "$ROOTFS" ] || rm -rf "$ROOTFS"
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        say "stopping the Docker daemon this script started (pid $DAEMON_PID)"
        kill -TERM "$DAEMON_PID"
        for _ in $(seq 60); do kill -0 "$DAEMON_PID" 2>/dev/null || return 0; sleep 0.5; done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

OWN_SOCKET="unix://$CACHE/docker.sock"
if ! "$DOCKER" info >/dev/null 2>&1; then
    export DOCKER_HOST="$OWN_SOCKET"
    if "$DOCKER" info >/dev/null 2>&1; then
        say "using the Docker daemon already serving $CACHE (left running)"
    else
        [ "$(id -u)" = 0 ] || die "no Docker daemon answers, and starting one needs root" \
            "start Docker (or set DOCKER_HOST), or run this script as root"
        mkdir -p "$CACHE"
        say "starting a Docker daemon of its own (data in $CACHE, log $CACHE/dockerd.log)"
        # At low CPU priority: the builds run as its children.
        nice -n 10 dockerd --bridge=none --iptables=false --ip6tables=false --data-root "$CACHE/data" \
            --exec-root "$CACHE/exec" --host "$OWN_SOCKET" --pidfile "$CACHE/dockerd.pid" \
            >"$CACHE/dockerd.log" 2>&1 &
        DAEMON_PID=$!
        for _ in $(seq 120); do
            "$DOCKER" info >/dev/null 2>&1 && break
            kill -0 "$DAEMON_PID" 2>/dev/null || die "dockerd exited at start: $(tail -3 "$CACHE/dockerd.log")" \
                "read $CACHE/dockerd.log"
            sleep 0.5
        done
        "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not answer within 60 s" "read $CACHE/dockerd.log"
    fi
fi

# ---------------------------------------------------------------- base image
# The Debian mirror apt uses here for $SUITE (and its security archive); deb.debian.org when apt has none.
apt_uri() { apt-cache policy 2>/dev/null | awk -v s="$1/" '$2 ~ /^https?:/ && index($3, s) == 1 {print $2; exit}'; }

if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    MIRROR="$(apt_uri "$SUITE")"
    SECURITY="$(apt_uri "$SUITE-security")"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
    SECURITY="${SECURITY:-http://deb.debian.org/debian-security}"
    say "no $BASE image: making it with debootstrap $SUITE from $MIRROR"
    ROOTFS="$(mktemp -d)"
    nice -n 10 debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; its log: $(tail -5 "$CACHE/debootstrap.log")" "read $CACHE/debootstrap.log"
    rm -f "$ROOTFS/etc/apt/sources.list"
    cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
    tar -C "$ROOTFS" --numeric-owner -c . | "$DOCKER" import --change 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$ROOTFS" && ROOTFS=""
    say "$BASE made ($("$DOCKER" image inspect -f '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1 / 1e6}'))"
fi

# ---------------------------------------------------------------- build
SECRET=()
PIP_CA="${PIP_CERT:-$(python3 -m pip config list 2>/dev/null | sed -n "s/^[a-z:]*\.cert='\(.*\)'$/\1/p" | head -1)}"
if [ -n "$PIP_CA" ] && [ -f "$PIP_CA" ]; then
    SECRET=(--secret "id=pip_cert,src=$PIP_CA")
    say "pip in the build trusts $PIP_CA (build secret pip_cert), as pip here does"
fi
say "building $IMAGE from deploy/Dockerfile (a cold build downloads ~1.2 GB)"
started=$SECONDS
DOCKER_BUILDKIT=1 nice -n 10 "$DOCKER" build --network host --progress plain "${SECRET[@]}" \
    -f "$ROOT/deploy/Dockerfile" -t "$IMAGE" "$ROOT"
say "built $IMAGE in $((SECONDS - started)) s: $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" |
    awk '{printf "%.0f MB", $1 / 1e6}')"

# ---------------------------------------------------------------- command
if [ ${#COMMAND[@]} -gt 0 ]; then
    export BERT_SQUAD_DOCKER="$DOCKER" BERT_SQUAD_IMAGE="$IMAGE" DOCKER_HOST="${DOCKER_HOST:-}"
    [ -n "$DOCKER_HOST" ] || unset DOCKER_HOST
    "${COMMAND[@]}"
fi
