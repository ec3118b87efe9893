#!/usr/bin/env bash
# Builds the test guest: a Debian kernel and a busybox-static initramfs whose /init (tests/guest/
# init) drives an NVMe disk and reports what it saw. Prints the directory holding the products as
# the only line on stdout (progress goes to stderr):
#   vmlinuz       the kernel of the package `linux-image-amd64` depends on (bookworm: 6.1)
#   initrd.img    gzip'd newc cpio: busybox, the nvme and filesystem modules with their
#                 dependencies in load order (/etc/modules.order, computed with depmod/modprobe
#                 on the extracted tree), /init, and the test data
#   pattern.bin   the deterministic test data the guest writes (also inside the initramfs)
#   pattern.sha256, KERNEL_VERSION, MODULES (the load order, for the record)
# Everything is cached under $PCIETUN_CACHE/guest (default /var/cache/pcietun): the kernel per
# package version, the initramfs per hash of its inputs, so a second run only checks the cache.
set -euo pipefail
LOG_PREFIX=build-guest
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=tests/guest/lib.sh
. "$HERE/lib.sh"

GUEST_CACHE="$PCIETUN_CACHE/guest"
# Modules the guest needs; their dependencies are added and ordered by modprobe --show-depends.
WANTED_MODULES=(nvme ext2 ext4
    # Issue 16's third-party cards (tests/guest/cards.sh; the 8250 PCI driver is built in).
    gpio-pci-idio-16 i6300esb)
PATTERN_MIB=4

# Deterministic test data: each 512-byte sector starts with a readable header naming its index
# (so a misplaced sector is visible in a hex dump) followed by bytes of a SHA-256 chain.
make_pattern() {
    /usr/bin/python3 - "$1" "$PATTERN_MIB" <<'EOF'
import hashlib, sys
path, mib = sys.argv[1], int(sys.argv[2])
out = bytearray()
state = hashlib.sha256(b"pcietun guest test pattern v1").digest()
for sector in range(mib * 2048):
    head = b"PCIETUN sector %08d\n" % sector
    body = bytearray()
    while len(body) < 512 - len(head):
        state = hashlib.sha256(state).digest()
        body += state
    out += head + body[: 512 - len(head)]
open(path, "wb").write(out)
EOF
}

# Extracts the kernel package into $GUEST_CACHE/kernel-<pkgversion>/root (only /boot and the
# modules directory are kept). Prints that directory.
fetch_kernel() {
    local pkg ver dir
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '!found && /Depends: linux-image-[0-9]/ { print $2; found = 1 }')
    [ -n "$pkg" ] || die "cannot tell which kernel package linux-image-amd64 depends on (apt-get update?)"
    ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
    dir="$GUEST_CACHE/kernel-$pkg-$ver"
    if [ ! -f "$dir/done" ]; then
        log "apt-get download $pkg ($ver)"
        rm -rf "$dir"
        mkdir -p "$dir/dl"
        chmod 777 "$dir/dl" # let apt's sandbox user write the download
        (cd "$dir/dl" && apt-get download -qq "$pkg=$ver" >&2) || die "apt-get download $pkg failed"
        dpkg -x "$dir"/dl/*.deb "$dir/root" || die "dpkg -x of $pkg failed"
        rm -rf "$dir/dl" "$dir/root/usr/share"
        touch "$dir/done"
    fi
    printf '%s\n' "$dir"
}

fetch_busybox() {
    local ver dir
    ver=$(apt-cache policy busybox-static | awk '/Candidate:/ { print $2 }')
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then die "no busybox-static package candidate"; fi
    dir="$GUEST_CACHE/busybox-${ver//:/_}"
    if [ ! -x "$dir/root/bin/busybox" ]; then
        log "apt-get download busybox-static ($ver)"
        rm -rf "$dir"
        mkdir -p "$dir/dl"
        chmod 777 "$dir/dl"
        (cd "$dir/dl" && apt-get download -qq "busybox-static=$ver" >&2) || die "apt-get download busybox-static failed"
        dpkg -x "$dir"/dl/*.deb "$dir/root" || die "dpkg -x busybox-static failed"
        rm -rf "$dir/dl"
    fi
    printf '%s\n' "$dir/root/bin/busybox"
}

# Prints the module files (relative to the modules dir) needed for WANTED_MODULES, in load order.
module_order() {
    local root="$1" kver="$2" m
    depmod -b "$root" "$kver" || die "depmod -b $root $kver failed"
    for m in "${WANTED_MODULES[@]}"; do
        # A module built into the kernel prints "builtin NAME"; a missing one fails.
        modprobe -d "$root" -S "$kver" --show-depends "$m" ||
            die "module $m not found in kernel $kver"
    done | awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' |
        sed "s|^$root/lib/modules/$kver/||"
}

build_initramfs() {
    local kdir="$1" busybox="$2" out="$3"
    local root="$kdir/root" kver
    kver=$(ls "$root/lib/modules" | head -n1)
    [ -f "$root/boot/vmlinuz-$kver" ] || die "no vmlinuz-$kver in the kernel package"

    local stage
    stage=$(mktemp -d "$GUEST_CACHE/stage.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this staging dir
    trap "rm -rf '$stage'" RETURN
    mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,mnt,etc,data,lib/modules}
    cp "$busybox" "$stage/bin/busybox"
    # /init uses busybox applets by name through PATH.
    local applet
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$stage/bin/$applet"
    done

    local order rel name
    order=$(module_order "$root" "$kver")
    [ -n "$order" ] || die "no module to load for ${WANTED_MODULES[*]}"
    : >"$stage/etc/modules.order"
    while read -r rel; do
        name=$(basename "$rel")
        case "$name" in
        *.ko.xz) xz -dc "$root/lib/modules/$kver/$rel" >"$stage/lib/modules/${name%.xz}" ;;
        *.ko.zst) zstd -qdc "$root/lib/modules/$kver/$rel" >"$stage/lib/modules/${name%.zst}" ;;
        *.ko.gz) gzip -dc "$root/lib/modules/$kver/$rel" >"$stage/lib/modules/${name%.gz}" ;;
        *.ko) cp "$root/lib/modules/$kver/$rel" "$stage/lib/modules/$name" ;;
        *) die "unexpected module file $rel" ;;
        esac
        name="${name%.xz}"
        name="${name%.zst}"
        name="${name%.gz}"
        printf '%s\n' "$name" >>"$stage/etc/modules.order"
    done <<<"$order"
    log "kernel $kver, modules in load order: $(tr '\n' ' ' <"$stage/etc/modules.order")"

    install -m 0755 "$HERE/init" "$stage/init"
    make_pattern "$stage/data/pattern.bin"
    (cd "$stage/data" && sha256sum pattern.bin | awk '{ print $1 }' >pattern.sha256)

    (cd "$stage" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc --quiet -R 0:0 | gzip -9n) >"$out/initrd.img.tmp" ||
        die "cpio of the initramfs failed"
    mv "$out/initrd.img.tmp" "$out/initrd.img"
    cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
    cp "$stage/data/pattern.bin" "$stage/data/pattern.sha256" "$out/"
    cp "$stage/etc/modules.order" "$out/MODULES"
    printf '%s\n' "$kver" >"$out/KERNEL_VERSION"
}

build() {
    local kdir busybox key out
    kdir=$(fetch_kernel)
    busybox=$(fetch_busybox)
    # The initramfs depends on the kernel, busybox, /init and this script (pattern, modules).
    key=$( {
        printf '%s\n%s\n' "$kdir" "$busybox"
        cat "$HERE/init" "$HERE/build-guest.sh"
    } | sha256sum | cut -c1-16)
    out="$GUEST_CACHE/image-$key"
    if [ ! -f "$out/done" ]; then
        rm -rf "$out"
        mkdir -p "$out"
        build_initramfs "$kdir" "$busybox" "$out"
        touch "$out/done"
        log "built $out ($(du -h "$out/initrd.img" | cut -f1) initramfs)"
        # Older images (other inputs) are never used again; we hold the lock, nobody builds them.
        local old
        for old in "$GUEST_CACHE"/image-*; do
            [ "$old" = "$out" ] || rm -rf "$old"
        done
    else
        log "using cached $out"
    fi
    printf '%s\n' "$out"
}

main() {
    need_root
    ensure_apt_lists linux-image-amd64 || die "apt-get update failed (is the Debian mirror reachable?)"
    apt_install cpio kmod xz-utils zstd gzip python3 || die "cannot install cpio, kmod, python3"
    mkdir -p "$GUEST_CACHE"
    with_lock "$PCIETUN_CACHE/guest.lock" build | tail -n1
}

main "$@"
