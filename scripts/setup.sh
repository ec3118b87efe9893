#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine. Idempotent: each step checks
# first and does nothing when its tool is already there. Run as root (CI is root); as another
# user it only says what is missing.
set -euo pipefail

need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v lspci >/dev/null 2>&1 || need_apt+=(pciutils)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# tests/vms_libvirt.rs: libvirt's domain schema and its validator (xmllint).
command -v virt-xml-validate >/dev/null 2>&1 || need_apt+=(libvirt-clients)
command -v xmllint >/dev/null 2>&1 || need_apt+=(libxml2-utils)
# `pcietun bench nvme --peer nbd`: the remote disk people use today, measured beside ours.
command -v nbdkit >/dev/null 2>&1 || need_apt+=(nbdkit)
command -v fio >/dev/null 2>&1 || need_apt+=(fio)
# tests/mgmt_metrics.rs: promtool lints the live /metrics output.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# tests/mgmt_validator.rs: scripts/redfish-validate.sh installs DMTF's validator into a venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)

if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: apt-get install ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: missing Debian packages (run as root to install): ${need_apt[*]}" >&2
    fi
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "setup: cargo install cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# Issue 16: the vfio-user peers of tests/vfio_user_client.rs and tests/vfio_user_tunnel.rs —
# QEMU with x-vfio-user-server (tests/guest/build-qemu.sh, which also fetches the qemu source)
# and libvfio-user's samples built from that source. Both are cached: a second run only checks.
if [ "$(id -u)" = 0 ]; then
    bash tests/guest/build-qemu.sh >/dev/null
    bash tests/vfio_user_peers/build-libvfio-user.sh >/dev/null
else
    echo "setup: not root; vfio-user peers not built (tests/vfio_user_peers/build-libvfio-user.sh)" >&2
fi
