#!/usr/bin/env bash
# System set-up for FANGS on a fresh Debian 12 machine (run as root).
# Idempotent: every step checks before it acts, so `make setup` can run often.
#
#  1. Debian packages: BCC (python3-bpfcc, libbpfcc, bpfcc-tools), kernel headers,
#     Docker, debootstrap (the sandbox image), PostgreSQL, Chromium.
#  2. Kernel header links: BCC compiles against Debian's 6.1 headers when the
#     running kernel has none of its own (see shared/ENVIRONMENT.md).
#  3. dockerd started in the background when nothing answers on its socket.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

PACKAGES=(python3-bpfcc libbpfcc bpfcc-tools linux-headers-amd64 docker.io
          debootstrap iproute2 procps)
# The test suite also needs PostgreSQL and a browser; `make demo` does not
# (FANGS_SETUP_FOR=demo), which keeps a fresh machine's demo short.
if [ "${FANGS_SETUP_FOR:-}" != demo ]; then
    PACKAGES+=(postgresql chromium chromium-driver)
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Kernel headers: link the running kernel's build/source dirs to Debian's headers.
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build" ]; then
    hdr=$(ls -d /lib/modules/*-amd64/build 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$hdr" ]; then
        log "no Debian kernel headers under /lib/modules (linux-headers-amd64 missing?)"
        exit 1
    fi
    base=$(dirname "$hdr")
    log "linking kernel headers for $kver to $base"
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$base/build" "/lib/modules/$kver/build"
    [ -e "$base/source" ] && ln -sfn "$base/source" "/lib/modules/$kver/source"
fi

# tracefs is where BCC finds tracepoint formats.
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi

# dockerd: no systemd here, so start it ourselves when it is not answering.
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    mkdir -p /var/log
    nohup /usr/sbin/dockerd --exec-opt native.cgroupdriver=cgroupfs >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; exit 1; }
fi
log "system ready"
