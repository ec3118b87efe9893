#!/usr/bin/env bash
# Builds libvfio-user and its sample servers (`server`, `client`, `gpio-pci-idio-16`, `null`,
# `lspci`), the vfio-user peers of the client-backend tests (issue 16), and prints the directory
# that holds the samples as the only line on stdout (progress goes to stderr).
#
# libvfio-user is not packaged by Debian; it ships inside Debian's qemu source package
# (`subprojects/libvfio-user/`). This extracts only that directory from the qemu .orig tarball
# that tests/guest/build-qemu.sh downloads (or the one given), builds it with meson and ninja
# (Debian: meson ninja-build libjson-c-dev libcmocka-dev pkg-config; seconds), the library
# linked statically so the samples run without the build tree, and caches the
# result under $PCIETUN_CACHE/libvfio-user/<qemu-version>/, so a second run only checks the
# cache. Builds are serialised with flock.
#
# Environment:
#   PCIETUN_CACHE          cache directory (default /var/cache/pcietun)
#   PCIETUN_QEMU_ORIG      the qemu_<version>.orig.tar.xz to take the sources from (default:
#                          the newest under $PCIETUN_CACHE/qemu-build/download/)
#   PCIETUN_LIBVFIO_USER_REBUILD=1  ignore the cache
set -euo pipefail
LOG_PREFIX=build-libvfio-user
# shellcheck source=tests/guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"

SAMPLES=(server client gpio-pci-idio-16 null lspci)

orig="${PCIETUN_QEMU_ORIG:-}"
if [ -z "$orig" ]; then
    orig=$(ls -1 "$PCIETUN_CACHE"/qemu-build/download/qemu_*.orig.tar.xz 2>/dev/null | sort -V | tail -n 1 || true)
fi
[ -n "$orig" ] && [ -f "$orig" ] ||
    die "no qemu source tarball (run tests/guest/build-qemu.sh first, or set PCIETUN_QEMU_ORIG)"
version=$(basename "$orig" .orig.tar.xz)
version=${version#qemu_}
out="$PCIETUN_CACHE/libvfio-user/$version"

complete() {
    local s
    for s in "${SAMPLES[@]}"; do [ -x "$out/samples/$s" ] || return 1; done
}

if [ "${PCIETUN_LIBVFIO_USER_REBUILD:-0}" != 1 ] && complete; then
    echo "$out/samples"
    exit 0
fi

for tool in meson ninja pkg-config cc; do
    command -v "$tool" >/dev/null 2>&1 || {
        if [ "$(id -u)" = 0 ]; then
            apt_install meson ninja-build libjson-c-dev libcmocka-dev pkg-config build-essential ||
                die "cannot install the build dependencies"
            break
        fi
        die "$tool is missing (apt-get install meson ninja-build libjson-c-dev libcmocka-dev pkg-config)"
    }
done
pkg-config --exists json-c || die "json-c development files missing (apt-get install libjson-c-dev)"

mkdir -p "$PCIETUN_CACHE/libvfio-user"
exec 9>"$PCIETUN_CACHE/libvfio-user/.lock"
flock 9
if [ "${PCIETUN_LIBVFIO_USER_REBUILD:-0}" != 1 ] && complete; then
    echo "$out/samples"
    exit 0
fi

work=$(mktemp -d "$PCIETUN_CACHE/libvfio-user/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "extracting subprojects/libvfio-user from $(basename "$orig")"
tar -xJf "$orig" -C "$work" --wildcards '*/subprojects/libvfio-user/*'
src=$(echo "$work"/*/subprojects/libvfio-user)
[ -f "$src/meson.build" ] || die "$(basename "$orig") has no subprojects/libvfio-user"
log "meson setup + ninja (libvfio-user $version)"
meson setup "$work/build" "$src" --buildtype=debug --default-library=static >"$work/setup.log" 2>&1 ||
    { tail -n 30 "$work/setup.log" >&2; die "meson setup failed"; }
ninja -C "$work/build" >"$work/ninja.log" 2>&1 ||
    { tail -n 30 "$work/ninja.log" >&2; die "ninja failed"; }

rm -rf "$out.new"
mkdir -p "$out.new/samples"
for s in "${SAMPLES[@]}"; do
    cp "$work/build/samples/$s" "$out.new/samples/$s"
done
# The samples' sources, for whoever reads a test that drives them.
cp -r "$src/samples" "$out.new/src-samples"
rm -rf "$out"
mv "$out.new" "$out"
complete || die "build finished but samples are missing under $out"
log "built into $out"
echo "$out/samples"
