#!/usr/bin/env bash
# The real-guest end-to-end test (issue 5), as scripts/test.sh runs it: a Linux guest in QEMU
# drives the appliance's NVMe controller through `pcietun host`'s vfio-user socket, keeps a
# filesystem on it, and the appliance's backing file holds the data afterwards. See
# docs/guest-test.md.
#
# Steps: obtain QEMU with vfio-user-pci (built once from Debian's source package, cached) and the
# guest (Debian kernel + busybox initramfs, cached); a smoke boot without a device; a reference
# run against QEMU's own NVMe model (validates the harness); then the tunnelled run, clean and
# with 1 % injected frame loss on both agents, and once on an SR-IOV VF of the appliance's drive
# (issue 11); then the hot-plug run (tests/guest/hotplug.sh:
# `pcietun ctl` assigns the pool's NVMe function to a running host agent, which hot-adds it into
# its VM over QMP; 5 assign/unassign cycles in one guest, the move to a second guest behind a
# second agent that never ejects, and back), clean and with the same loss; then the third-party
# cards run (tests/guest/cards.sh, issue 16): libvfio-user's gpio-pci-idio-16 sample and QEMU's
# pci-serial and i6300esb, served over vfio-user and driven by the guest's in-tree drivers,
# directly and through the tunnel, with the config spaces compared.
#
# If QEMU or the guest cannot be obtained (no Debian mirror, build failure), or the pcietun
# binary has no appliance/host subcommand, it prints a loud SKIPPED line and exits 0 -- unless
# PCIETUN_REQUIRE_ALL=1 (CI), then it exits 1.
#
# Environment: PCIETUN_BIN (skip the cargo build), PCIETUN_CACHE (default /var/cache/pcietun),
# PCIETUN_GUEST_LOSS (default 1), PCIETUN_GUEST_LOGS (where logs are kept, default
# target/guest-logs).
set -euo pipefail
cd "$(dirname "$0")/.."
GUEST_DIR=tests/guest

skip() {
    echo "SKIPPED: guest end-to-end test: $*"
    if [ "${PCIETUN_REQUIRE_ALL:-0}" = 1 ]; then
        echo "PCIETUN_REQUIRE_ALL=1: a skipped test is a failure" >&2
        exit 1
    fi
    exit 0
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" = 0 ] || skip "not root (the test installs Debian packages and builds QEMU into /var/cache)"

t=$(now)
qemu=$("$GUEST_DIR/build-qemu.sh") || skip "could not obtain a qemu-system-x86_64 with vfio-user-pci (see the build-qemu messages above)"
echo "guest: QEMU ready in $(since "$t")s: $qemu"
t=$(now)
guest=$("$GUEST_DIR/build-guest.sh") || skip "could not build the guest kernel/initramfs (see the build-guest messages above)"
echo "guest: guest image ready in $(since "$t")s: $guest"
export PCIETUN_QEMU="$qemu" PCIETUN_GUEST_DIR="$guest"

logs="${PCIETUN_GUEST_LOGS:-target/guest-logs}"
passed=0
failed=0
failures=()
run() {
    local name="$1" script=run.sh
    shift
    if [ "${1:-}" = --hotplug ]; then
        script=hotplug.sh
        shift
    elif [ "${1:-}" = --cards ]; then
        script=cards.sh
        shift
    fi
    echo
    echo "=== guest: $name"
    rm -rf "${logs:?}/$name"
    if bash "$GUEST_DIR/$script" --logs "$logs/$name" "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "guest: $name FAILED (logs kept in $logs/$name)"
    fi
}

run smoke-no-device --no-device
run reference-qemu-nvme --qemu-nvme

if [ -n "${PCIETUN_BIN:-}" ]; then
    bin="$PCIETUN_BIN"
else
    echo "guest: cargo build --release (for target/release/pcietun)"
    cargo build --release --locked --bin pcietun || { echo "guest: cargo build --release failed"; exit 1; }
    bin="$PWD/target/release/pcietun"
fi
export PCIETUN_BIN="$bin"
missing=()
for sub in appliance host; do
    "$bin" "$sub" --help >/dev/null 2>&1 || missing+=("$sub")
done
if ((${#missing[@]})); then
    echo "guest: $passed passed, $failed failed (harness only)"
    ((failed == 0)) || exit 1
    skip "$bin has no '${missing[*]}' subcommand yet: the tunnelled runs cannot start"
fi

run tunnel-clean
loss="${PCIETUN_GUEST_LOSS:-1}"
run "tunnel-loss-$loss" --loss "$loss"
run tunnel-sriov-vf --vf
run hotplug-clean --hotplug
run "hotplug-loss-$loss" --hotplug --loss "$loss"
run cards --cards

echo
if ((failed)); then
    echo "guest: FAILED: ${failures[*]}"
fi
echo "guest: $passed passed, $failed failed"
((failed == 0))
