#!/usr/bin/env bash
# Real-guest hot-plug test (issue 15): a running Linux guest gains and loses the appliance's NVMe
# function through the host agent's QMP hot-plug, with no rescan and no reboot, in ONE boot.
#
#   appliance --device nvme=BACKING   <- UDP ->   host --vfio-user DIR --vm guest=QMP --vm-control CTL
#                                                     | device_add / device_del (QMP)
#   qemu-system-x86_64 (TCG, q35, options from `pcietun host qemu-args`, no device at boot)
#        guest /init in pcietun.mode=hotplug (tests/guest/init): only waits and reads sysfs
#
# 1. QEMU boots the guest with spare pcie-root-ports and no tunnelled device.
# 2. The host agent starts with the VM configured: its FunctionAdded for 01:00.0 hot-adds the
#    function (cycle 1). The guest sees the controller appear, nvme binds, it makes a filesystem,
#    writes and syncs a file.
# 3. `pcietun host vm detach 01:00.0` (device_del; the guest's pciehp ejects; DEVICE_DELETED): the
#    controller disappears from the guest cleanly. `vm attach 01:00.0` brings it back (cycle 2),
#    and the guest verifies what cycle 1 wrote and writes its own. CYCLES cycles in all.
# 4. Unless --no-noeject: one more attach, after which the guest blocks the removal (unbinds
#    pcieport from that root port). The detach must end within the grace period plus a bound with
#    the function withdrawn (outcome "withdrawn"), the agent answering, QEMU running (checked on a
#    second QMP socket) and the guest alive; the guest's next I/O fails and its nvme driver drops
#    the dead controller (the surprise removal); a last attach lands on another port and reads
#    back that cycle's data, then leaves cleanly.
# 5. The backing file holds every cycle's file (e2fsck, debugfs), the agents exit 0 on SIGTERM.
# Prints the measured assign -> "driver bound" and unassign -> "gone" times (request issued on the
# host until the guest's console line), and PASS or FAIL.
#
# Usage: hotplug.sh [--loss PCT] [--cycles N] [--no-noeject] [--grace-ms MS] [--timeout S] [--logs DIR]
# Environment: PCIETUN_BIN, PCIETUN_QEMU, PCIETUN_GUEST_DIR (as run.sh).
set -euo pipefail
LOG_PREFIX=hotplug
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=tests/guest/lib.sh
. "$HERE/lib.sh"

loss=""
cycles=5
noeject=1
grace_ms=20000
timeout_s=900
logs_dir=""
while (($#)); do
    case "$1" in
    --loss) loss="${2:?--loss needs a percentage}"; shift ;;
    --cycles) cycles="${2:?--cycles needs a number}"; shift ;;
    --no-noeject) noeject=0 ;;
    --grace-ms) grace_ms="${2:?--grace-ms needs milliseconds}"; shift ;;
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift ;;
    --logs) logs_dir="${2:?--logs needs a directory}"; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
((cycles >= 1)) || die "--cycles must be at least 1"
label="guest hot-plug, $cycles cycles"
[ "$noeject" = 1 ] && label="$label + a guest that never ejects"
[ -n "$loss" ] && label="$label, ${loss} % injected loss"

QEMU=$("$HERE/build-qemu.sh") || die "cannot obtain QEMU (tests/guest/build-qemu.sh)"
GUEST="${PCIETUN_GUEST_DIR:-}"
[ -n "$GUEST" ] || GUEST=$("$HERE/build-guest.sh") || die "cannot build the guest (tests/guest/build-guest.sh)"
BIN="${PCIETUN_BIN:-$REPO/target/release/pcietun}"
[ -x "$BIN" ] || die "no pcietun binary at $BIN (cargo build --release, or set PCIETUN_BIN)"
if ! command -v e2fsck >/dev/null || ! command -v debugfs >/dev/null; then
    need_root
    apt_install e2fsprogs || die "cannot install e2fsprogs (e2fsck, debugfs)"
fi

tmp=$(mktemp -d /tmp/pcietun-hotplug.XXXXXX)
pids=()
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
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

now() { date +%s.%N; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
t_start=$(now)

# Waits until file $1 has a line matching the extended regex $2 while process $3 lives; at most
# $4 seconds.
wait_for() {
    local file="$1" re="$2" pid="$3" limit="$4" i
    for ((i = 0; i < limit * 20; i++)); do
        { tr -d '\r' <"$file"; } 2>/dev/null | grep -qE "$re" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
console() { { tr -d '\r' <"$tmp/console.log"; } 2>/dev/null; }

free_udp_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# One QMP command on the test's own monitor (the agent holds the other one); prints the reply.
qmp() {
    /usr/bin/python3 - "$tmp/test.qmp" "$1" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
f = s.makefile("rw")
json.loads(f.readline())
for cmd in ({"execute": "qmp_capabilities"}, {"execute": sys.argv[2]}):
    f.write(json.dumps(cmd) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" not in r:
            break
print(json.dumps(r))
EOF
}

vm() { "$BIN" host vm --control "$tmp/vm.ctl" "$@"; }

loss_args=()
[ -n "$loss" ] && loss_args=(--inject-loss "$loss")
backing="$tmp/nvme.img"
truncate -s 64M "$backing"
port=$(free_udp_port)

# --- the VM: options from `pcietun host qemu-args`, plus the test's kernel and console.
mapfile -t vm_args < <("$BIN" host qemu-args --json --ports 4 --memory 512M --qmp "$tmp/agent.qmp" |
    /usr/bin/python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["args"]))') ||
    fail "pcietun host qemu-args failed"
((${#vm_args[@]} > 4)) || fail "pcietun host qemu-args printed no options"
log "VM options: ${vm_args[*]}"
log "booting the guest (no device) under TCG, kernel $(cat "$GUEST/KERNEL_VERSION")"
timeout -k 5 "$timeout_s" "$QEMU" -L /usr/share/qemu -L /usr/share/seabios \
    -accel tcg -cpu max -smp "${PCIETUN_GUEST_SMP:-1}" "${vm_args[@]}" \
    -qmp "unix:$tmp/test.qmp,server=on,wait=off" \
    -nodefaults -display none -no-reboot \
    -chardev "file,id=con,path=$tmp/console.log" -serial chardev:con \
    -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.img" \
    -append "console=ttyS0 loglevel=6 panic=-1 pcietun.mode=hotplug pcietun.wait=120 pcietun.cycles=$cycles pcietun.noeject=$noeject" \
    >"$tmp/qemu.log" 2>&1 &
qpid=$!
pids+=("$qpid")
wait_for "$tmp/console.log" '^GUEST: .*hotplug ready' "$qpid" 120 ||
    fail "the guest did not reach 'hotplug ready' within 120 s"
log "$(console | grep -m1 'hotplug ready')"

log "starting appliance on udp:127.0.0.1:$port with nvme=$backing ${loss_args[*]}"
"$BIN" appliance --listen "udp:127.0.0.1:$port" --device "nvme=$backing" "${loss_args[@]}" \
    >"$tmp/appliance.log" 2>&1 &
appliance_pid=$!
pids+=("$appliance_pid")
wait_for "$tmp/appliance.log" '^appliance ready:' "$appliance_pid" 30 ||
    fail "the appliance did not print 'appliance ready:' within 30 s"

# --- cycle 1: the agent's own FunctionAdded hot-adds the function.
mkdir "$tmp/vfu"
log "starting host agent with --vm guest=$tmp/agent.qmp ${loss_args[*]}"
t_req=$(now)
"$BIN" host --connect "udp:127.0.0.1:$port" --vfio-user "$tmp/vfu" "${loss_args[@]}" \
    --vm "guest=$tmp/agent.qmp" --vm-control "$tmp/vm.ctl" --vm-grace-ms "$grace_ms" \
    >"$tmp/host.log" 2>&1 &
host_pid=$!
pids+=("$host_pid")

bound_ms=()
gone_ms=()
# Waits for the guest's "cycle $1: $2" line (at most $3 s); step_ms = the ms since $t_req.
guest_step() {
    wait_for "$tmp/console.log" "^GUEST: \[[0-9. ]*\] cycle $1: $2" "$qpid" "$3" ||
        fail "the guest did not report 'cycle $1: $2' within $3 s"
    step_ms=$(ms_since "$t_req")
}
for ((c = 1; c <= cycles; c++)); do
    if ((c > 1)); then
        t_req=$(now)
        out=$(vm attach 01:00.0) || fail "vm attach (cycle $c) failed: $out"
        [[ "$out" == *'"ok":true'* ]] || fail "vm attach (cycle $c): $out"
    fi
    guest_step "$c" bound 120
    bound_ms+=("$step_ms")
    log "cycle $c: driver bound $((bound_ms[-1])) ms after the request; $(grep -c '"event":"attached"' "$tmp/host.log") attach event(s)"
    guest_step "$c" synced 120
    ((c == 1)) || console | grep -qE "cycle $c: verified cycle $((c - 1))" ||
        fail "cycle $c: the guest did not verify the data of cycle $((c - 1))"
    t_req=$(now)
    out=$(vm detach 01:00.0) || fail "vm detach (cycle $c) failed: $out"
    [[ "$out" == *'"outcome":"ejected"'* ]] || fail "cycle $c: detach did not end with the guest's eject: $out"
    guest_step "$c" gone 60
    gone_ms+=("$step_ms")
    log "cycle $c: gone $((gone_ms[-1])) ms after the request ($out)"
done

noeject_ms=""
if [ "$noeject" = 1 ]; then
    c=$((cycles + 1))
    t_req=$(now)
    out=$(vm attach 01:00.0) || fail "vm attach (no-eject cycle) failed: $out"
    guest_step "$c" bound 120
    guest_step "$c" "synced .*noeject armed" 120
    log "cycle $c: $(console | grep -oE "cycle $c: synced .*" | tail -n1)"
    t_req=$(now)
    out=$(vm detach 01:00.0) || fail "vm detach (no-eject) failed: $out"
    noeject_ms=$(ms_since "$t_req")
    [[ "$out" == *'"outcome":"withdrawn"'* ]] || fail "no-eject: expected outcome withdrawn, got: $out"
    bound=$((grace_ms + 15000))
    ((noeject_ms <= bound)) || fail "no-eject: detach took ${noeject_ms} ms, more than grace ${grace_ms} ms + 15 s"
    grep -q '"event":"guest_did_not_release"' "$tmp/host.log" ||
        fail "no-eject: the agent reported no guest_did_not_release event"
    log "no-eject: withdrawn after ${noeject_ms} ms (grace ${grace_ms} ms)"
    # Everything still healthy: the agent answers, QEMU runs, the guest is alive.
    vm list >/dev/null || fail "no-eject: the agent does not answer 'vm list' any more"
    st=$(qmp query-status) || fail "no-eject: QEMU's monitor does not answer"
    [[ "$st" == *'"running": true'* ]] || fail "no-eject: QEMU is not running: $st"
    log "no-eject: agent and QEMU ($st) healthy"
    # The guest lives on: it notices the withdrawal (its I/O fails) and says so.
    guest_step "$((cycles + 1))" "surprise removal seen" 120
    log "no-eject: the guest saw the surprise removal $step_ms ms after the detach request: $(console | grep -oE "cycle $((cycles + 1)): surprise removal seen.*" | tail -n1)"
    # The function is free: it comes back on another port and holds the data.
    c=$((cycles + 2))
    t_req=$(now)
    out=$(vm attach 01:00.0) || fail "vm attach (after no-eject) failed: $out"
    [[ "$out" == *'"device":"pcietun-01_00.0-2"'* ]] || fail "after no-eject: expected a second device id, got $out"
    guest_step "$c" bound 120
    guest_step "$c" synced 120
    console | grep -qE "cycle $c: verified cycle $((c - 1))" || fail "after no-eject: cycle $((c - 1)) data not verified"
    t_req=$(now)
    out=$(vm detach 01:00.0) || fail "vm detach (last) failed: $out"
    [[ "$out" == *'"outcome":"ejected"'* ]] || fail "last detach: $out"
    guest_step "$c" gone 60
fi

wait "$qpid" || qrc=$?
qrc=${qrc:-0}
result=$(console | grep -m1 '^GUEST RESULT:' || true)
echo "=== $label: what the guest saw"
console | grep -E '^GUEST' | grep -vE 'alive, waiting|dmesg:' || true
[ "$result" = "GUEST RESULT: PASS" ] || fail "the guest reported: ${result:-nothing}"
[ "$qrc" = 0 ] || fail "QEMU exited with status $qrc"

# --- host side: the backing file holds every cycle's file, byte for byte as the guest wrote it.
e2fsck -fn "$backing" >"$tmp/e2fsck.log" 2>&1 || fail "e2fsck: $(tail -n 5 "$tmp/e2fsck.log" | tr '\n' ' ')"
# Every cycle but the last writes a file, which the next cycle verified.
last=$((cycles - 1))
[ "$noeject" = 1 ] && last=$((cycles + 1))
for ((c = 1; c <= last; c++)); do
    want=$(console | grep -oE "cycle $((c + 1)): verified cycle $c: sha256 [0-9a-f]+" | awk '{ print $NF }')
    [ -n "$want" ] || fail "cycle $c has no verified checksum on the console"
    debugfs -R "dump /cycle-$c.bin $tmp/c.bin" "$backing" >/dev/null 2>&1 || fail "no /cycle-$c.bin in the backing file"
    got=$(sha256sum "$tmp/c.bin" | cut -d' ' -f1)
    [ "$got" = "$want" ] || fail "/cycle-$c.bin in the backing file differs from what the guest wrote"
done
echo "host side: backing file passes e2fsck and holds the files of cycles 1..$last as the guest wrote them"

for name in host appliance; do
    pid_var="${name}_pid"
    pid=${!pid_var}
    kill -TERM "$pid"
    st=0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fail "the $name agent did not exit within 10 s of SIGTERM"
    wait "$pid" || st=$?
    [ "$st" = 0 ] || fail "the $name agent exited with status $st on SIGTERM"
done

if [ -n "$loss" ] && [ "$loss" != 0 ]; then
    drops=$(grep -hoE 'injected_drops"?[=: ]+[0-9]+' "$tmp/host.log" "$tmp/appliance.log" |
        grep -oE '[0-9]+$' | awk '{ s += $1 } END { print s + 0 }')
    ((drops > 0)) || fail "--loss $loss was given but the agents report no injected drops"
    echo "agents: $drops frames dropped by --inject-loss $loss"
fi

stats() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1; s += $1 } END { printf "min %d ms, median %d ms, max %d ms", a[1], a[int((NR + 1) / 2)], a[NR] }'; }
echo "times: assign -> driver bound: $(stats "${bound_ms[@]}") (cycle 1, from agent start: ${bound_ms[0]} ms)"
echo "times: unassign -> gone: $(stats "${gone_ms[@]}")"
[ -n "$noeject_ms" ] && echo "times: unassign of a guest that never ejects -> withdrawn: ${noeject_ms} ms (grace ${grace_ms} ms)"
echo "PASS: $label ($(awk -v a="$t_start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s)"
