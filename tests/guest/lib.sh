# shellcheck shell=bash
# Shared helpers for the guest end-to-end scripts (sourced, not run).
#
# Every script logs to stderr with a prefix, keeps its products under one cache directory
# (PCIETUN_CACHE, default /var/cache/pcietun) and serialises builds with flock so two runs on the
# same machine never build the same thing at once.

PCIETUN_CACHE="${PCIETUN_CACHE:-/var/cache/pcietun}"

log() { printf '%s: %s\n' "${LOG_PREFIX:-guest}" "$*" >&2; }
die() {
    printf '%s: ERROR: %s\n' "${LOG_PREFIX:-guest}" "$*" >&2
    exit 1
}

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (installs Debian packages into the system)"
}

# apt-get install, quietly, only the packages not installed yet.
apt_install() {
    local missing=() p
    for p in "$@"; do
        [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == *'install ok installed'* ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "apt-get install ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get update -qq || return 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return 1
    fi
}

# apt-get update once if apt knows no candidate for package $1 (fresh machine, empty lists).
# (Output captured first: `| grep -q` under pipefail fails when the writer gets SIGPIPE.)
ensure_apt_lists() {
    local policy
    policy=$(apt-cache policy "$1" 2>/dev/null || true)
    if [[ "$policy" != *"Candidate: "[0-9]* ]]; then
        log "apt-get update (no candidate for $1 yet)"
        apt-get update -qq >&2 || return 1
    fi
}

# Run "$@" while holding an exclusive lock on $1 (a lock file path).
with_lock() {
    local lockfile="$1"
    shift
    mkdir -p "$(dirname "$lockfile")"
    (
        flock -w 1800 9 || die "timed out waiting for lock $lockfile"
        "$@"
    ) 9>"$lockfile"
}

# A free UDP port on 127.0.0.1 (for an appliance's --listen).
free_udp_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until file $1 has a line starting with $2 while process $3 lives; at most $4 seconds.
wait_for_line() {
    local file="$1" prefix="$2" pid="$3" limit="$4" i
    for ((i = 0; i < limit * 10; i++)); do
        grep -q "^$prefix" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Stops the processes given: SIGTERM to all, up to 5 s each to exit, then SIGKILL; reaps them.
stop_pids() {
    local p
    for p in "$@"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "$@"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
