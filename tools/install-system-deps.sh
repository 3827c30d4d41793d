#!/bin/sh
# Install the system tools the fault tests need: `ip` (iproute2) and `nft` (nftables).
#
# Idempotent: does nothing when both are present. Only root can install; a non-root run, or an
# install that fails or times out, still exits 0: the partition tests then skip and say why
# (tests/faults/netlab.py checks for root, `ip`, `nft` and network namespaces itself).
# `make test` and `make faults` call this before running.
set -u

have() { command -v "$1" >/dev/null 2>&1; }

if have ip && have nft; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-system-deps: not root; skipping nftables/iproute2 (partition fault tests will skip)" >&2
    exit 0
fi
if ! have apt-get; then
    echo "install-system-deps: no apt-get; install nftables and iproute2 by hand for the partition tests" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
run() {
    # Bounded: a hung mirror must not hang `make test`.
    if have timeout; then timeout 300 "$@"; else "$@"; fi
}
echo "install-system-deps: installing nftables and iproute2" >&2
if run apt-get update -qq >/dev/null 2>&1 \
    && run apt-get install -y -qq --no-install-recommends nftables iproute2 >/dev/null 2>&1; then
    echo "install-system-deps: done" >&2
else
    echo "install-system-deps: apt-get failed; partition fault tests will skip" >&2
fi
exit 0
