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
