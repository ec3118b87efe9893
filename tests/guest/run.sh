#!/usr/bin/env bash
# End-to-end test of the tunnel with a real Linux guest: the guest's in-tree nvme driver drives an
# NVMe controller that lives in `pcietun appliance`, reached through `pcietun host`'s vfio-user
# socket, and stores a filesystem on it.
#
#   appliance --listen udp:127.0.0.1:PORT --device nvme=BACKING      (fresh 64 MiB backing file)
#        ^ UDP on loopback (optionally with --inject-loss on both agents)
#   host --connect udp:127.0.0.1:PORT --vfio-user DIR                 (DIR/01:00.0.sock)
#        ^ vfio-user over a UNIX socket
#   qemu-system-x86_64 (TCG) -device vfio-user-pci  ->  guest /init (tests/guest/init)
#
# The guest writes known data through a filesystem and raw, reads it back after dropping its
# caches and prints `GUEST RESULT: PASS|FAIL`. Then this script checks, from the host, that the
# appliance's backing file holds the same bytes (e2fsck, debugfs dump, raw region) and prints
# PASS or FAIL with what the guest saw. Exit status 0 only on PASS.
#
# Usage: run.sh [--no-device | --qemu-nvme | --vf] [--loss PCT] [--timeout SECS] [--logs DIR]
#   --no-device   smoke test without pcietun: QEMU boots the guest with no tunnelled device; the
#                 guest must load its modules and find no NVMe controller
#   --qemu-nvme   reference run without pcietun: the same guest test and host-side checks against
#                 QEMU's own emulated NVMe controller on the backing file (validates this harness,
#                 and gives a baseline to compare the tunnelled run's timings with)
#   --vf          SR-IOV (issue 11): the appliance's NVMe drive has 2 VFs of 64 MiB
#                 (`--device nvme=FILE,vfs=2,vf_size=64M`, a 192 MiB file), the lone host gets
#                 the VFs, and the guest's nvme driver drives VF 1 as a standalone controller;
#                 the host-side checks run on VF 1's slice of the file (64..128 MiB), and the PF's
#                 and VF 2's slices must still be all zeros
#   --loss PCT    pass --inject-loss PCT to both agents (e.g. 1 for 1 % frame loss)
#   --timeout S   hard limit for the QEMU run (default 300; 120 with --no-device)
#   --logs DIR    copy every log (agents, QEMU, serial console) into DIR before cleaning up
# Environment: PCIETUN_BIN (default: target/release/pcietun), PCIETUN_QEMU (see build-qemu.sh),
# PCIETUN_GUEST_DIR (default: what build-guest.sh prints, cached).
set -euo pipefail
LOG_PREFIX=run
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=tests/guest/lib.sh
. "$HERE/lib.sh"

no_device=0
qemu_nvme=0
vf=0
loss=""
timeout_s=""
logs_dir=""
while (($#)); do
    case "$1" in
    --no-device) no_device=1 ;;
    --qemu-nvme) qemu_nvme=1 ;;
    --vf) vf=1 ;;
    --loss) loss="${2:?--loss needs a percentage}"; shift ;;
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift ;;
    --logs) logs_dir="${2:?--logs needs a directory}"; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
((no_device + qemu_nvme + vf <= 1)) || die "--no-device, --qemu-nvme and --vf exclude each other"
[ -n "$timeout_s" ] || { [ "$no_device" = 1 ] && timeout_s=120 || timeout_s=300; }
label="guest e2e through pcietun"
[ "$no_device" = 1 ] && label="guest smoke (no device)"
[ "$qemu_nvme" = 1 ] && label="guest reference run (QEMU's own NVMe, no tunnel)"
[ "$vf" = 1 ] && label="guest e2e through pcietun on an SR-IOV VF"
[ -n "$loss" ] && label="$label, ${loss} % injected loss"

# Cached after the first build; honours PCIETUN_QEMU.
QEMU=$("$HERE/build-qemu.sh") || die "cannot obtain QEMU (tests/guest/build-qemu.sh)"
GUEST="${PCIETUN_GUEST_DIR:-}"
[ -n "$GUEST" ] || GUEST=$("$HERE/build-guest.sh") || die "cannot build the guest (tests/guest/build-guest.sh)"
BIN=""
if [ "$no_device" = 0 ] && [ "$qemu_nvme" = 0 ]; then
    BIN="${PCIETUN_BIN:-$REPO/target/release/pcietun}"
    [ -x "$BIN" ] || die "no pcietun binary at $BIN (cargo build --release, or set PCIETUN_BIN)"
fi

if [ "$no_device" = 0 ] && { ! command -v e2fsck >/dev/null || ! command -v debugfs >/dev/null; }; then
    need_root
    apt_install e2fsprogs || die "cannot install e2fsprogs (e2fsck, debugfs) for the host-side check"
fi

tmp=$(mktemp -d /tmp/pcietun-guest.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids "${pids[@]}"
    if [ -n "$logs_dir" ]; then
        mkdir -p "$logs_dir"
        cp "$tmp"/*.log "$logs_dir"/ 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints the last lines of each log, for a failure report.
show_logs() {
    local f
    for f in "$tmp"/appliance.log "$tmp"/host.log "$tmp"/qemu.log "$tmp"/console.log; do
        [ -s "$f" ] || continue
        echo "----- last lines of $(basename "$f") -----"
        tail -n "${1:-40}" "$f" | tr -d '\r'
    done
}

fail() {
    echo "FAIL: $label: $*"
    show_logs 60
    exit 1
}


# Sends SIGTERM to agent $1 (pid $2) and requires exit status 0 within 10 s.
stop_agent() {
    local name="$1" pid="$2" st=0 i
    kill -TERM "$pid" 2>/dev/null || fail "the $name agent was no longer running after the guest finished"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && fail "the $name agent did not exit within 10 s of SIGTERM"
    wait "$pid" || st=$?
    [ "$st" = 0 ] || fail "the $name agent exited with status $st on SIGTERM (expected a clean exit, 0)"
}

t_start=$(date +%s.%N)
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

loss_args=()
[ -n "$loss" ] && loss_args=(--inject-loss "$loss")
device_args=()
backing="$tmp/nvme.img"
mode=nodevice
if [ "$qemu_nvme" = 1 ]; then
    mode=nvme
    truncate -s 64M "$backing"
    # shellcheck disable=SC2054 # QEMU's option syntax uses commas
    device_args=(-drive "file=$backing,if=none,id=disk,format=raw"
        -device nvme,serial=pcietun-reference,drive=disk)
elif [ "$no_device" = 0 ]; then
    mode=nvme
    device="nvme=$backing"
    if [ "$vf" = 1 ]; then
        truncate -s 192M "$backing"
        device="nvme=$backing,vfs=2,vf_size=64M"
    else
        truncate -s 64M "$backing"
    fi
    port=$(free_udp_port)
    log "starting appliance on udp:127.0.0.1:$port with $device ${loss_args[*]}"
    "$BIN" appliance --listen "udp:127.0.0.1:$port" --device "$device" "${loss_args[@]}" \
        >"$tmp/appliance.log" 2>&1 &
    appliance_pid=$!
    pids+=("$appliance_pid")
    wait_for_line "$tmp/appliance.log" "appliance ready:" "${pids[-1]}" 30 ||
        fail "the appliance did not print 'appliance ready:' within 30 s (or exited)"
    log "$(grep -m1 '^appliance ready:' "$tmp/appliance.log")"

    mkdir "$tmp/vfu"
    log "starting host agent --connect udp:127.0.0.1:$port --vfio-user $tmp/vfu ${loss_args[*]}"
    "$BIN" host --connect "udp:127.0.0.1:$port" --vfio-user "$tmp/vfu" "${loss_args[@]}" \
        >"$tmp/host.log" 2>&1 &
    host_pid=$!
    pids+=("$host_pid")
    wait_for_line "$tmp/host.log" "host ready:" "${pids[-1]}" 30 ||
        fail "the host agent did not print 'host ready:' within 30 s (or exited)"
    log "$(grep -m1 '^host ready:' "$tmp/host.log")"
    sock="$tmp/vfu/01:00.0.sock"
    if [ "$vf" = 1 ]; then
        # The lone host gets both VFs, never the PF: VF 1 in its slot 0, VF 2 in slot 1.
        grep -q 'assigned function=00.0.vf0 host=host slot=0$' "$tmp/appliance.log" ||
            fail "the appliance did not assign VF 1 (00.0.vf0) to the host's slot 0"
        grep -q 'assigned function=00.0.vf1 host=host slot=1$' "$tmp/appliance.log" ||
            fail "the appliance did not assign VF 2 (00.0.vf1) to the host's slot 1"
        ! grep -q 'assigned function=00.0 ' "$tmp/appliance.log" || fail "the appliance assigned the PF of pooled VFs"
        mapfile -t vf_socks < <(ls "$tmp"/vfu/*.sock 2>/dev/null | sort)
        ((${#vf_socks[@]} == 2)) || fail "the host serves ${#vf_socks[@]} functions, not the 2 VFs: ${vf_socks[*]}"
        grep -E '^pcietun host: ' "$tmp/host.log" | sed 's/^/host: /' >&2 || true
        log "the guest takes VF 1 at $sock"
    fi
    [ -S "$sock" ] || fail "no vfio-user socket at $sock (have: $(ls "$tmp/vfu" | tr '\n' ' '))"
    device_args=(-device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"$sock\",\"type\":\"unix\"}}")
fi

log "booting the guest under TCG (timeout ${timeout_s}s, kernel $(cat "$GUEST/KERNEL_VERSION"))"
t_qemu=$(date +%s.%N)
timeout -k 5 "$timeout_s" "$QEMU" -L /usr/share/qemu -L /usr/share/seabios \
    -accel tcg -cpu max -smp "${PCIETUN_GUEST_SMP:-1}" -m 512M \
    -object memory-backend-memfd,id=mem,size=512M,share=on -machine pc,memory-backend=mem \
    -nodefaults -display none -no-reboot \
    -chardev "file,id=con,path=$tmp/console.log" -serial chardev:con \
    -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.img" \
    -append "console=ttyS0 loglevel=6 panic=-1 pcietun.mode=$mode pcietun.wait=60" \
    "${device_args[@]}" >"$tmp/qemu.log" 2>&1 &
qpid=$!
pids+=("$qpid")
qrc=0
wait "$qpid" || qrc=$?
qemu_s=$(awk -v a="$t_qemu" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

echo "=== $label: what the guest saw (QEMU ran ${qemu_s}s, exit status $qrc)"
tr -d '\r' <"$tmp/console.log" | grep '^GUEST' || echo "(no GUEST line on the serial console)"
result=$(tr -d '\r' <"$tmp/console.log" | grep -m1 '^GUEST RESULT:' || true)
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    fail "QEMU did not finish within ${timeout_s}s (the guest hung; see the console and agent logs)"
fi
[ -n "$result" ] || fail "the guest printed no GUEST RESULT line (QEMU exit status $qrc)"
[ "$result" = "GUEST RESULT: PASS" ] || fail "the guest reported: ${result#GUEST RESULT: }"
[ "$qrc" = 0 ] || fail "QEMU exited with status $qrc after the guest passed"

if [ "$no_device" = 0 ]; then
    # The appliance's backing file must hold what the guest wrote (it flushed before powering off).
    expected="$GUEST/pattern.bin"
    if [ "$vf" = 1 ]; then
        # VF i's namespace is the (i+1)-th 64 MiB slice: check VF 1's as the disk, and that
        # nothing reached the PF's or VF 2's.
        for z in 0 128; do
            cmp -s <(dd if="$backing" bs=1M skip=$z count=64 status=none) <(head -c 67108864 /dev/zero) ||
                fail "the slice at $z MiB of the backing file (not VF 1's) was written"
        done
        dd if="$backing" of="$tmp/vf1.img" bs=1M skip=64 count=64 status=none
        echo "host side: the PF's slice (0..64 MiB) and VF 2's (128..192 MiB) of the backing file are still all zeros"
        backing="$tmp/vf1.img"
    fi
    e2fsck -fn "$backing" >"$tmp/e2fsck.log" 2>&1 ||
        fail "e2fsck finds the filesystem in the backing file inconsistent: $(tail -n 5 "$tmp/e2fsck.log" | tr '\n' ' ')"
    debugfs -R "dump /pattern.bin $tmp/fs-pattern.bin" "$backing" >/dev/null 2>"$tmp/debugfs.log" ||
        fail "debugfs cannot read /pattern.bin from the backing file"
    cmp -s "$tmp/fs-pattern.bin" "$expected" ||
        fail "/pattern.bin in the backing file's filesystem differs from the data the guest wrote"
    marker=$(debugfs -R "cat /marker.txt" "$backing" 2>/dev/null)
    [ "$marker" = "pcietun guest marker: written through the tunnel" ] ||
        fail "/marker.txt in the backing file holds '$marker'"
    cmp -s <(dd if="$backing" bs=1M skip=56 count=1 status=none) <(head -c 1048576 "$expected") ||
        fail "the raw region at 56 MiB of the backing file differs from what the guest wrote"
    echo "host side: backing file passes e2fsck; /pattern.bin ($(stat -c %s "$expected") B), /marker.txt and the raw 1 MiB at 56 MiB match what the guest wrote"

fi
if [ -n "$BIN" ]; then
    # The contract: both agents exit cleanly (status 0) on SIGTERM. Host agent first (the client).
    stop_agent host "$host_pid"
    stop_agent appliance "$appliance_pid"
    echo "agents: both exited with status 0 on SIGTERM"
    grep -hvE 'warning: no --(psk|key)|^(appliance|host) ready:' "$tmp/host.log" "$tmp/appliance.log" |
        sed 's/^/agents: /' || true
    # With injected loss, frames must really have been dropped. The transport driver counts them
    # (DriverStats::injected_drops); this holds the agents to it once they log the counter, as
    # `injected_drops=N` or in JSON.
    drops=$(grep -hoE 'injected_drops"?[=: ]+[0-9]+' "$tmp/host.log" "$tmp/appliance.log" |
        grep -oE '[0-9]+$' | awk '{ s += $1; n++ } END { if (n) print s }' || true)
    if [ -n "$loss" ] && [ "$loss" != 0 ]; then
        if [ -z "$drops" ]; then
            echo "note: the agents log no injected_drops counter, so this run cannot confirm that frames were dropped"
        elif [ "$drops" = 0 ]; then
            fail "--inject-loss $loss was given but the agents report 0 injected drops"
        else
            echo "agents: $drops frames dropped by --inject-loss $loss, and the guest saw none of it"
        fi
    fi
fi
echo "PASS: $label ($(elapsed)s total, QEMU ${qemu_s}s)"
