#!/usr/bin/env bash
# Obtains a qemu-system-x86_64 that has the vfio-user-pci client (QEMU >= 10.1) and prints its
# absolute path as the only line on stdout (progress goes to stderr).
#
# Debian bookworm ships QEMU 7.2, which has no vfio-user client, so this builds Debian's own
# source package of a newer QEMU from the `sid` suite:
#   * adds a deb-src entry for `sid` that reuses the URI of the machine's configured Debian
#     sources (nothing host-specific is written into the project),
#   * picks the newest qemu source version >= 10.1 that `apt-cache showsrc qemu` offers now,
#   * builds only qemu-system-x86_64 (no default features, ~3-4 min on 2 quiet cores, ~11 under
#     load) with meson and pycotap from PyPI in a private venv. Besides TCG it is configured with
#     KVM support, multi-process and the vfio-user *server* (`x-vfio-user-server`, libvfio-user
#     from the source package's subprojects/) so third-party vfio-user device servers can be run
#     from the same binary (issue 16); KVM is compiled in and never used here (run with -accel tcg),
#   * installs the firmware it needs from Debian (qemu-system-data, seabios): run the binary with
#     `-L /usr/share/qemu -L /usr/share/seabios`.
# The binary is cached under $PCIETUN_CACHE/qemu/<version>-cfg<KEY>/ (default /var/cache/pcietun),
# KEY a hash of the configure flags below and of the patches in qemu-patches/ (fixes carried on
# top of Debian's source, e.g. vfio-user-pci hot-unplug), so a second run only checks the cache
# and a binary built with other flags or patches (an older cache) is rebuilt, once, then removed. Bookworm's qemu-system-x86 package is never installed: callers
# use the explicit path printed here.
#
# Environment:
#   PCIETUN_QEMU        use this qemu-system-x86_64 instead (must have vfio-user-pci)
#   PCIETUN_CACHE       cache directory (default /var/cache/pcietun)
#   PCIETUN_QEMU_REBUILD=1  ignore cached binaries
set -euo pipefail
LOG_PREFIX=build-qemu
# shellcheck source=tests/guest/lib.sh
. "$(dirname "$0")/lib.sh"

MIN_VERSION=10.1
QEMU_CACHE="$PCIETUN_CACHE/qemu"
# Every configure flag; their hash is part of the cache key (change a flag: one rebuild).
CONFIGURE_FLAGS=(
    --target-list=x86_64-softmmu --without-default-features --enable-fdt=system
    --disable-install-blobs --disable-docs --disable-tools --disable-user
    # Issue 16: QEMU's device models served over vfio-user (x-remote machine, x-vfio-user-server).
    --enable-kvm --enable-multiprocess --enable-vfio-user-server
    # The bundled libvfio-user linked in: the cached binary must run without the build tree.
    -Dlibvfio-user:default_library=static
)
# Fixes we carry on top of Debian's source (qemu-patches/*.patch, applied in name order).
PATCH_DIR="$(cd "$(dirname "$0")" && pwd)/qemu-patches"
FLAGS_KEY=$( {
    printf '%s\n' "${CONFIGURE_FLAGS[@]}"
    cat "$PATCH_DIR"/*.patch 2>/dev/null || true
} | sha256sum | cut -c1-12)
SID_SOURCES=/etc/apt/sources.list.d/pcietun-sid-src.sources

# True when $1 is a runnable qemu-system-x86_64 that offers the vfio-user-pci device. (The
# output is captured first: `| grep -q` under pipefail fails when QEMU gets SIGPIPE.)
qemu_usable() {
    local devices
    [ -x "$1" ] && devices=$("$1" -device help 2>/dev/null) && [[ "$devices" == *'"vfio-user-pci"'* ]]
}

# True when $1 also has what the configure flags promise: the vfio-user server object.
qemu_complete() {
    local objects
    qemu_usable "$1" && objects=$("$1" -object help 2>/dev/null) &&
        [[ "$objects" == *'x-vfio-user-server'* ]]
}

firmware_present() {
    [ -e /usr/share/seabios/bios-256k.bin ] && [ -e /usr/share/qemu/linuxboot_dma.bin ]
}

# The newest cached binary built with today's configure flags that still works, or nothing.
cached_qemu() {
    local dir best=""
    [ -d "$QEMU_CACHE" ] || return 0
    for dir in "$QEMU_CACHE"/*-cfg"$FLAGS_KEY"/; do
        [ -f "$dir/qemu-system-x86_64" ] || continue
        qemu_complete "$dir/qemu-system-x86_64" || continue
        best="${dir%/}/qemu-system-x86_64" # globs sort ascending: keep the last usable
    done
    [ -n "$best" ] && printf '%s\n' "$best"
    return 0
}

# The URI of the machine's main Debian archive (not the security one), from its sources files.
debian_uri() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        if [ ! -f "$f" ] || [ "$f" = "$SID_SOURCES" ]; then continue; fi
        # deb822 stanzas: print the URIs of stanzas whose suites are not *-security.
        uri=$(awk '
            /^[[:space:]]*$/ { if (u != "" && s !~ /-security/) { print u; exit } u=""; s=""; next }
            /^URIs:/ { u=$2 }
            /^Suites:/ { s=$0 }
            END { if (u != "" && s !~ /-security/) print u }
        ' "$f")
        [ -n "$uri" ] && { printf '%s\n' "$uri"; return 0; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "deb" && $0 !~ /-security/ {
                   for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f")
        [ -n "$uri" ] && { printf '%s\n' "$uri"; return 0; }
    done
    return 1
}

add_sid_sources() {
    local uri
    uri=$(debian_uri) || die "no Debian archive URI found in /etc/apt/sources.list{,.d/*}"
    local want
    want=$(printf 'Types: deb-src\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri")
    if [ ! -f "$SID_SOURCES" ] || [ "$(cat "$SID_SOURCES")" != "$want" ]; then
        log "adding deb-src for sid (from $uri) in $SID_SOURCES"
        printf '%s\n' "$want" >"$SID_SOURCES"
    fi
    log "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed (is the Debian mirror reachable?)"
}

# The qemu source versions >= MIN_VERSION known to apt (e.g. 1:10.2.2+ds-1), newest first.
# PCIETUN_QEMU_VERSION pins one.
candidate_versions() {
    if [ -n "${PCIETUN_QEMU_VERSION:-}" ]; then
        printf '%s\n' "$PCIETUN_QEMU_VERSION"
        return 0
    fi
    local v
    apt-cache showsrc qemu 2>/dev/null | awk '/^Version:/ { print $2 }' | sort -u |
        while read -r v; do
            dpkg --compare-versions "$v" ge "1:$MIN_VERSION" && printf '%s\n' "$v"
        done | sort -r -V -t: -k2
}

# Downloads the source of version $1 into the current directory unless it is there already
# (an index can name a version whose files already left the pool: then this fails).
download_source() {
    local v="$1" upstream
    upstream="${v#*:}"
    upstream="${upstream%-*}"
    ls qemu_"$upstream".orig.tar.* >/dev/null 2>&1 && return 0
    log "apt-get source --download-only qemu=$v"
    apt-get source -qq --download-only "qemu=$v" >&2 && ls qemu_"$upstream".orig.tar.* >/dev/null 2>&1
}

# Build dependencies from Debian, meson >= 1.5 and pycotap from PyPI in a venv.
prepare_build_tools() {
    apt_install build-essential patch pkg-config device-tree-compiler ninja-build libglib2.0-dev \
        libpixman-1-dev libfdt-dev flex bison python3-venv libjson-c-dev libcmocka-dev ||
        die "could not install QEMU build dependencies"
    local venv="$PCIETUN_CACHE/venv"
    if ! "$venv/bin/python3" -c 'import mesonbuild, pycotap' 2>/dev/null; then
        log "python venv with meson >= 1.5 and pycotap (PyPI) in $venv"
        rm -rf "$venv"
        /usr/bin/python3 -m venv "$venv" || die "python3 -m venv failed"
        "$venv/bin/pip" install -q 'meson>=1.5' pycotap >&2 || die "pip install meson pycotap failed"
    fi
}

# Downloads and builds version $1; prints the cached binary's path. Dies on any failure (the
# caller runs it in a subshell and moves on to an older version).
build_version() {
    local version="$1"
    local dl="$PCIETUN_CACHE/qemu-build/download"
    mkdir -p "$dl"
    (cd "$dl" && download_source "$version") || die "qemu=$version cannot be downloaded"
    local key="${version#*:}-cfg$FLAGS_KEY"
    local out="$QEMU_CACHE/$key" work="$PCIETUN_CACHE/qemu-build/$key"
    local venv="$PCIETUN_CACHE/venv"
    log "building QEMU $version (only qemu-system-x86_64; about 3-4 minutes on 2 cores)"
    mkdir -p "$work"
    cd "$work"
    local upstream="${version#*:}"
    upstream="${upstream%-*}" # 10.2.2+ds
    local tarball
    tarball=$(ls "$dl"/qemu_"$upstream".orig.tar.*)
    tarball="${tarball%%$'\n'*}"
    rm -rf src
    mkdir src
    log "unpacking $tarball"
    tar -xf "$tarball" -C src --strip-components=1 || die "cannot unpack $tarball"
    cd src
    # Debian's tarball strips the prebuilt EDK2 firmware; do not try to unpack it.
    # Every assignment (there is one per candidate target) becomes false.
    sed -i -E 's/^([[:space:]]*unpack_edk2_blobs[[:space:]]*=).*/\1 false/' meson.build
    grep -qE '^[[:space:]]*unpack_edk2_blobs[[:space:]]*= false' meson.build ||
        log "note: no unpack_edk2_blobs assignment found in meson.build (layout changed?)"
    local p
    for p in "$PATCH_DIR"/*.patch; do
        [ -f "$p" ] || continue
        log "applying $(basename "$p")"
        patch -p1 -s --no-backup-if-mismatch <"$p" || die "QEMU $version: $(basename "$p") does not apply"
    done

    mkdir -p build
    cd build
    log "configure"
    PATH="$venv/bin:$PATH" ../configure --python="$venv/bin/python3" "${CONFIGURE_FLAGS[@]}" \
        >"$work/configure.log" 2>&1 || {
        tail -n 40 "$work/configure.log" >&2
        die "QEMU $version: configure failed (log: $work/configure.log)"
    }
    log "ninja qemu-system-x86_64"
    PATH="$venv/bin:$PATH" ninja -j"$(nproc)" qemu-system-x86_64 >"$work/ninja.log" 2>&1 || {
        tail -n 40 "$work/ninja.log" >&2
        die "QEMU $version: build failed (log: $work/ninja.log)"
    }
    qemu_usable ./qemu-system-x86_64 || die "QEMU $version: the binary has no vfio-user-pci device"
    qemu_complete ./qemu-system-x86_64 || die "QEMU $version: the binary has no x-vfio-user-server object"
    mkdir -p "$out"
    install -m 0755 qemu-system-x86_64 "$out/qemu-system-x86_64.tmp"
    qemu_complete "$out/qemu-system-x86_64.tmp" ||
        die "QEMU $version: the installed copy does not run outside the build tree (shared libraries?)"
    mv "$out/qemu-system-x86_64.tmp" "$out/qemu-system-x86_64"
    printf '%s\n' "$version" >"$out/VERSION"
    printf '%s\n' "${CONFIGURE_FLAGS[@]}" >"$out/CONFIGURE_FLAGS"
    (cd "$PATCH_DIR" 2>/dev/null && ls ./*.patch 2>/dev/null) >"$out/PATCHES" || true
    cd /
    rm -rf "$work/src" # ~1 GiB of objects; the downloaded tarball stays for a rebuild
    log "cached $out/qemu-system-x86_64"
    # Binaries built with other flags (or by an older version of this script) are never used
    # again; we hold the lock, so nobody is building them.
    local old
    for old in "$QEMU_CACHE"/*/; do
        [ "${old%/}" = "$out" ] || rm -rf "${old%/}"
    done
    printf '%s\n' "$out/qemu-system-x86_64"
}

# Builds the newest candidate version that downloads and builds; prints the binary's path.
build() {
    local cached v rc path
    cached=$(cached_qemu)
    if [ -n "$cached" ]; then
        printf '%s\n' "$cached" # another run built one while we waited for the lock
        return 0
    fi
    prepare_build_tools
    for v in "$@"; do
        # A plain subshell (not in a condition) so `set -e` stays in force inside it.
        set +e
        path=$(
            set -e
            build_version "$v"
        )
        rc=$?
        set -e
        if [ "$rc" = 0 ] && [ -n "$path" ]; then
            printf '%s\n' "$path"
            return 0
        fi
        rm -rf "$PCIETUN_CACHE/qemu-build/${v#*:}-cfg$FLAGS_KEY/src"
        log "QEMU $v is not usable here; trying an older version"
    done
    die "no qemu source version ($*) could be downloaded and built"
}

main() {
    if [ -n "${PCIETUN_QEMU:-}" ]; then
        qemu_usable "$PCIETUN_QEMU" || die "PCIETUN_QEMU=$PCIETUN_QEMU has no vfio-user-pci device"
        firmware_present || { need_root && apt_install qemu-system-data seabios; } ||
            die "cannot install firmware (qemu-system-data, seabios)"
        printf '%s\n' "$PCIETUN_QEMU"
        return 0
    fi
    local cached=""
    [ "${PCIETUN_QEMU_REBUILD:-0}" = 1 ] || cached=$(cached_qemu)
    if [ -n "$cached" ] && firmware_present; then
        log "using cached $cached ($("$cached" --version | head -n1))"
        printf '%s\n' "$cached"
        return 0
    fi
    need_root
    # Firmware first: it is a plain bookworm install and tells early whether apt works at all.
    firmware_present || apt_install qemu-system-data seabios ||
        die "cannot install firmware packages qemu-system-data and seabios"
    if [ -z "$cached" ]; then
        add_sid_sources
        local versions
        versions=$(candidate_versions)
        [ -n "$versions" ] || die "apt-cache showsrc qemu offers no version >= $MIN_VERSION"
        log "qemu source versions offered (newest first): ${versions//$'\n'/ }"
        # shellcheck disable=SC2086 # one word per version
        cached=$(with_lock "$PCIETUN_CACHE/qemu.lock" build $versions | tail -n1)
    fi
    qemu_usable "$cached" || die "$cached is not usable"
    printf '%s\n' "$cached"
}

main "$@"
