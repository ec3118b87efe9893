#!/usr/bin/env bash
# Third-party cards in a real Linux guest (issue 16): devices that other people implemented,
# driven by the guest's in-tree drivers through the whole tunnel.
#
#   libvfio-user's gpio-pci-idio-16 sample (-v)              \
#   qemu -machine x-remote ... -device pci-serial (chardev)   }  vfio-user servers
#   qemu -machine x-remote ... -device i6300esb               /
#        ^ vfio-user (the appliance is the client)
#   pcietun appliance --device vfio-user=S1 --device vfio-user=S2 --device vfio-user=S3
#        ^ UDP on loopback (optionally with --inject-loss on both agents)
#   pcietun host --vfio-user DIR        (one socket per function)
#        ^ vfio-user (the host agent is the server)
#   qemu-system-x86_64 (TCG) -device vfio-user-pci x3  ->  guest /init, pcietun.mode=cards
#
# One guest boot takes all three cards. First a reference boot connects the guest's
# vfio-user-pci devices to fresh servers directly (no pcietun: validates the harness and gives
# the config space to compare with), then the tunnelled boot. Each boot must show:
#   * gpio-pci-idio-16: the in-tree driver binds; the 12 values the guest reads from GPIO
#     line 0 are bit 0 of the last 12 values the sample's own trace says it answered at BAR2
#     offset 0 (its counter / 3), in order;
#   * pci-serial: the 8250 driver binds; the 64 lines the guest writes arrive byte for byte in
#     the server's chardev file, and the guest's IRQ count for the port grew (the driver's
#     transmit is interrupt-driven: INTx through the tunnel);
#   * i6300esb: the watchdog driver binds; while the guest pets it (2 s timeout, every second,
#     10 s) the server's watchdog never fires (`-action watchdog=debug` prints "watchdog: timer
#     fired"); after the guest stops petting without the magic close it fires (the check can
#     fail, and the pets are what kept it quiet).
# Then the config space the guest saw of each card through the tunnel must equal the direct
# one, apart from the registers enumeration programs (Command, Status, BARs, Expansion ROM,
# Interrupt Line, and the cache line size / latency timer the guest's kernel may write).
#
# Usage: cards.sh [--loss PCT] [--timeout SECS] [--logs DIR]
# Environment: PCIETUN_BIN (default target/release/pcietun), PCIETUN_QEMU, PCIETUN_GUEST_DIR,
# PCIETUN_LIBVFIO_USER_SAMPLES (default: what tests/vfio_user_peers/build-libvfio-user.sh prints).
set -euo pipefail
LOG_PREFIX=cards
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=tests/guest/lib.sh
. "$HERE/lib.sh"

loss=""
timeout_s=240
logs_dir=""
while (($#)); do
    case "$1" in
    --loss) loss="${2:?--loss needs a percentage}"; shift ;;
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift ;;
    --logs) logs_dir="${2:?--logs needs a directory}"; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
label="third-party cards in a guest"
[ -n "$loss" ] && label="$label, ${loss} % injected loss"

QEMU=$("$HERE/build-qemu.sh") || die "cannot obtain QEMU (tests/guest/build-qemu.sh)"
GUEST="${PCIETUN_GUEST_DIR:-}"
[ -n "$GUEST" ] || GUEST=$("$HERE/build-guest.sh") || die "cannot build the guest (tests/guest/build-guest.sh)"
SAMPLES="${PCIETUN_LIBVFIO_USER_SAMPLES:-}"
[ -n "$SAMPLES" ] || SAMPLES=$("$REPO/tests/vfio_user_peers/build-libvfio-user.sh") ||
    die "cannot build libvfio-user's samples (tests/vfio_user_peers/build-libvfio-user.sh)"
[ -x "$SAMPLES/gpio-pci-idio-16" ] || die "no gpio-pci-idio-16 sample in $SAMPLES"
BIN="${PCIETUN_BIN:-$REPO/target/release/pcietun}"
[ -x "$BIN" ] || die "no pcietun binary at $BIN (cargo build --release, or set PCIETUN_BIN)"

tmp=$(mktemp -d /tmp/pcietun-cards.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids "${pids[@]}"
    if [ -n "$logs_dir" ]; then
        mkdir -p "$logs_dir"
        cp -r "$tmp"/direct "$tmp"/tunnel "$logs_dir"/ 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    local f
    echo "FAIL: $label: $*"
    for f in "$run"/*.log "$run"/*.trace; do
        [ -s "$f" ] || continue
        echo "----- last lines of ${f#"$tmp"/} -----"
        tail -n 30 "$f" | tr -d '\r'
    done
    exit 1
}

wait_socket() {
    local i
    for ((i = 0; i < 200; i++)); do
        [ -S "$1" ] && return 0
        sleep 0.1
    done
    fail "no socket at $1 within 20 s"
}


# QEMU's device model $1 served over vfio-user at socket $2, extra QEMU args after.
qemu_server() {
    local device="$1" sock="$2"
    shift 2
    "$QEMU" -L /usr/share/qemu -L /usr/share/seabios -accel tcg -nodefaults -display none \
        -machine x-remote,vfio-user=on,auto-shutdown=on "$@" -device "$device,id=d0" \
        -object "x-vfio-user-server,id=v0,type=unix,path=$sock,device=d0" &
    pids+=($!)
}

# Starts the three servers of run directory $run: sockets gpio.sock, serial.sock, wdt.sock.
start_servers() {
    "$SAMPLES/gpio-pci-idio-16" -v "$run/gpio.sock" >"$run/gpio.log" 2>"$run/gpio.trace" &
    pids+=($!)
    qemu_server pci-serial,chardev=out "$run/serial.sock" \
        -chardev "file,id=out,path=$run/serial.out" >"$run/serial-server.log" 2>&1
    qemu_server i6300esb "$run/wdt.sock" -action watchdog=debug >"$run/wdt-server.log" 2>&1
    wait_socket "$run/gpio.sock"
    wait_socket "$run/serial.sock"
    wait_socket "$run/wdt.sock"
}

# The expected serial output (what the guest's init writes).
serial_text() {
    local k
    for ((k = 1; k <= 64; k++)); do
        printf 'pcietun serial line %04d: written by the guest through the 8250 driver\n' "$k"
    done
}

# Boots the guest with vfio-user-pci devices on the sockets given; checks the cards.
boot() {
    local name="$1" dev_args=() s
    shift
    for s in "$@"; do
        dev_args+=(-device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"$s\",\"type\":\"unix\"}}")
    done
    log "$name: booting the guest under TCG (timeout ${timeout_s}s)"
    local t0 qrc=0
    t0=$(date +%s.%N)
    timeout -k 5 "$timeout_s" "$QEMU" -L /usr/share/qemu -L /usr/share/seabios \
        -accel tcg -cpu max -smp 1 -m 512M \
        -object memory-backend-memfd,id=mem,size=512M,share=on -machine pc,memory-backend=mem \
        -nodefaults -display none -no-reboot \
        -chardev "file,id=con,path=$run/console.log" -serial chardev:con \
        -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.img" \
        -append "console=ttyS0 loglevel=6 panic=-1 pcietun.mode=cards pcietun.wait=60" \
        "${dev_args[@]}" >"$run/qemu.log" 2>&1 &
    local qpid=$!
    pids+=("$qpid")
    # While the guest runs: how often the watchdog had fired when the guest stopped petting.
    local fired_at_stop=""
    while kill -0 "$qpid" 2>/dev/null; do
        if [ -z "$fired_at_stop" ] && tr -d '\r' <"$run/console.log" 2>/dev/null | grep -q 'GUEST: .* wdt: petting stopped'; then
            fired_at_stop=$(grep -c 'watchdog: timer fired' "$run/wdt-server.log" || true)
        fi
        sleep 0.2
    done
    wait "$qpid" || qrc=$?
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "=== $label, $name: what the guest saw (QEMU ran ${secs}s, exit status $qrc)"
    tr -d '\r' <"$run/console.log" | grep '^GUEST' | grep -v '^GUEST: .* cfg ' || echo "(no GUEST line on the serial console)"
    [ "$qrc" != 124 ] && [ "$qrc" != 137 ] || fail "$name: QEMU did not finish within ${timeout_s}s"
    local result
    result=$(tr -d '\r' <"$run/console.log" | grep -m1 '^GUEST RESULT:' || true)
    [ "$result" = "GUEST RESULT: PASS" ] || fail "$name: the guest reported: ${result:-nothing}"

    # GPIO: each `cat` of the line's value file is two reads of BAR2 offset 0 (sysfs calls the
    # driver for every read(), and cat's second read finds EOF); the value it prints is the
    # first. So the guest's 12 values are bit 0 of the 1st, 3rd, ... of the sample's last 24
    # answers at (0:1), in order.
    local got want
    got=$(tr -d '\r' <"$run/console.log" | sed -n 's/^GUEST: .* gpio: line 0 read 12 times: \([01]*\)$/\1/p')
    want=$(sed -n 's/^gpio: region2: read \(0x[0-9a-f]*\|0\) from (0:1)$/\1/p' "$run/gpio.trace" |
        tail -n 24 | awk 'NR % 2 == 1' | while read -r v; do printf '%d' $((v & 1)); done)
    [ ${#got} = 12 ] || fail "$name: gpio: the guest printed no 12 line values"
    [ "$got" = "$want" ] || fail "$name: gpio: the guest read $got, the sample's trace says it answered $want"
    [[ "$got" == *0* && "$got" == *1* ]] || fail "$name: gpio: the values never changed ($got): not the sample's counter"
    echo "$name: gpio: the guest read $got from line 0, exactly bit 0 of the sample's answers at BAR2 offset 0 to those reads ($(grep -c '^gpio: region2: ' "$run/gpio.trace") BAR2 accesses in its trace)"

    # Serial: every byte arrived, in order.
    cmp -s <(serial_text) "$run/serial.out" ||
        fail "$name: serial: the server's chardev holds $(stat -c %s "$run/serial.out" 2>/dev/null || echo 0) bytes, not the $(serial_text | wc -c) the guest wrote (first difference: $(cmp <(serial_text) "$run/serial.out" 2>&1 | head -n1))"
    echo "$name: serial: the server's chardev holds the guest's 64 lines ($(stat -c %s "$run/serial.out") bytes) byte for byte"

    # Watchdog: quiet while petted, fired once abandoned.
    local fired
    fired=$(grep -c 'watchdog: timer fired' "$run/wdt-server.log" || true)
    [ -n "$fired_at_stop" ] || fail "$name: wdt: never saw the guest stop petting"
    [ "$fired_at_stop" = 0 ] || fail "$name: wdt: the server's watchdog fired $fired_at_stop times while the guest was petting it"
    [ "$fired" -gt 0 ] || fail "$name: wdt: the watchdog never fired after the guest stopped petting (the check could not tell pets from nothing)"
    echo "$name: wdt: no expiry in 10 s of petting at a 2 s timeout; fired $fired time(s) once abandoned"
    echo "$name: PASS"
}

# The config dump lines of card $1 from console log $2, as "OFFSET byte byte ...".
cfg_dump() {
    tr -d '\r' <"$2" | sed -n "s/^GUEST: \[[^]]*\] cfg $1 //p"
}

# Registers enumeration (or the guest's kernel) programs: Command/Status, cache line size and
# latency timer, BARs, Expansion ROM, Interrupt Line.
programmed() {
    local r=$1
    ((r >= 0x04 && r <= 0x07)) || ((r == 0x0c || r == 0x0d)) || ((r >= 0x10 && r <= 0x27)) ||
        ((r >= 0x30 && r <= 0x33)) || ((r == 0x3c))
}

compare_cfg() {
    local card="$1" a b off i x y diffs=0 compared=0
    a=$(cfg_dump "$card" "$tmp/direct/console.log")
    b=$(cfg_dump "$card" "$tmp/tunnel/console.log")
    [ -n "$a" ] && [ -n "$b" ] || fail "config: no dump of $card in both runs"
    [ "$(wc -l <<<"$a")" = "$(wc -l <<<"$b")" ] ||
        fail "config: $card: $(wc -l <<<"$a") lines directly, $(wc -l <<<"$b") through the tunnel"
    while read -r -a la <&3 && read -r -a lb <&4; do
        off=$((16#${la[0]}))
        for ((i = 1; i <= 16; i++)); do
            x=${la[i]} y=${lb[i]}
            programmed $((off + i - 1)) && continue
            compared=$((compared + 1))
            if [ "$x" != "$y" ]; then
                echo "config: $card: byte $(printf '%#x' $((off + i - 1))): $x directly, $y through the tunnel"
                diffs=$((diffs + 1))
            fi
        done
    done 3<<<"$a" 4<<<"$b"
    ((diffs == 0)) || fail "config: $card: $diffs bytes differ"
    echo "config: $card: the $compared bytes enumeration does not program are equal directly and through the tunnel"
}

t_start=$(date +%s.%N)

# 1. Reference: the guest drives the servers directly.
run="$tmp/direct"
mkdir -p "$run"
start_servers
boot direct "$run/gpio.sock" "$run/serial.sock" "$run/wdt.sock"

# 2. Through the tunnel: fresh servers (each serves one connection), the appliance as their
# client, the host agent serving the guest.
run="$tmp/tunnel"
mkdir -p "$run/vfu"
start_servers
loss_args=()
[ -n "$loss" ] && loss_args=(--inject-loss "$loss")
port=$(free_udp_port)
"$BIN" appliance --listen "udp:127.0.0.1:$port" "${loss_args[@]}" \
    --device "vfio-user=$run/gpio.sock" --device "vfio-user=$run/serial.sock" \
    --device "vfio-user=$run/wdt.sock" >"$run/appliance.log" 2>&1 &
appliance_pid=$!
pids+=("$appliance_pid")
wait_for_line "$run/appliance.log" "appliance ready:" "$appliance_pid" 30 ||
    fail "the appliance did not print 'appliance ready:' within 30 s (or exited)"
log "$(grep -m1 '^appliance ready:' "$run/appliance.log")"
"$BIN" host --connect "udp:127.0.0.1:$port" --vfio-user "$run/vfu" --no-control "${loss_args[@]}" \
    >"$run/host.log" 2>&1 &
host_pid=$!
pids+=("$host_pid")
wait_for_line "$run/host.log" "host ready:" "$host_pid" 30 ||
    fail "the host agent did not print 'host ready:' within 30 s (or exited)"
log "$(grep -m1 '^host ready:' "$run/host.log")"
mapfile -t socks < <(ls "$run"/vfu/*.sock 2>/dev/null | sort)
((${#socks[@]} == 3)) || fail "the host agent serves ${#socks[@]} functions, not 3: ${socks[*]}"
boot tunnel "${socks[@]}"
# Both agents must still run, and stop cleanly on SIGTERM (host first, the client).
for a in host:$host_pid appliance:$appliance_pid; do
    kill -TERM "${a#*:}" 2>/dev/null || fail "the ${a%%:*} agent was no longer running after the guest finished"
    st=0
    timeout 10 tail --pid="${a#*:}" -f /dev/null || fail "the ${a%%:*} agent did not exit within 10 s of SIGTERM"
    wait "${a#*:}" || st=$?
    [ "$st" = 0 ] || fail "the ${a%%:*} agent exited with status $st on SIGTERM"
done
if [ -n "$loss" ] && [ "$loss" != 0 ]; then
    drops=$(grep -hoE 'injected_drops=[0-9]+' "$run/host.log" "$run/appliance.log" | cut -d= -f2 |
        awk '{ s += $1 } END { print s + 0 }')
    ((drops > 0)) || fail "--inject-loss $loss was given but the agents report no injected drop"
    echo "agents: $drops frames dropped by --inject-loss $loss, and the guest saw none of it"
fi

# 3. The same config space both ways.
for card in gpio serial wdt; do
    compare_cfg "$card"
done
echo "PASS: $label ($(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s)"
