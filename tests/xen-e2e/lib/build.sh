# shellcheck shell=bash
# Cached builders for the real-Xen end-to-end harness (sourced by run.sh).
#
# Every artifact lives under $CACHE and is named by a key derived from its inputs (kernel
# version, package versions, the builder's own text), so a re-run reuses it and a change of
# any input rebuilds only what depends on it. Builders write to a temporary name and rename
# at the end: an interrupted build never leaves a half artifact that looks finished.

# key_of STRING... -> 12 hex digits
key_of() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }

# The text of a function, so editing a builder invalidates what it built.
fn_text() { declare -f "$1"; }

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

# ---------------------------------------------------------------- host packages
HOST_PACKAGES=(
    xen-hypervisor-4.17-amd64 xen-utils-4.17 xenstore-utils linux-image-amd64
    busybox-static cpio kmod debootstrap e2fsprogs linux-source-6.1 gcc make xz-utils
    libc6-dev   # static links: fpu-canary here, the +crt-static pvusb binaries in run.sh
)

apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "${PVUSB_SKIP_APT:-0}" = 1 ] && die "missing Debian packages (PVUSB_SKIP_APT=1): ${missing[*]}"
    log "apt-get install ${missing[*]}"
    if [ -z "${APT_UPDATED:-}" ]; then
        env DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
        APT_UPDATED=1
    fi
    nice -n 10 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >>"$LOGDIR/apt.log" 2>&1 || return 1
}

# The Debian 6.1 kernel the VMs run (not the host's kernel): newest /boot/vmlinuz-6.1.*.
detect_kernel() {
    KVER=$(find /boot -maxdepth 1 -name 'vmlinuz-6.1.*-amd64' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -1)
    [ -n "$KVER" ] || die "no /boot/vmlinuz-6.1.*-amd64 (linux-image-amd64 not installed?)"
    VMLINUZ=/boot/vmlinuz-$KVER
    [ -d "/lib/modules/$KVER" ] || die "/lib/modules/$KVER missing"
}

ensure_host_packages() {
    apt_install "${HOST_PACKAGES[@]}" || die "apt-get install failed (see $LOGDIR/apt.log)"
    detect_kernel
    apt_install "linux-headers-$KVER" || die "cannot install linux-headers-$KVER"
    ensure_qemu
}

# qemu-system-x86 7.2 from bookworm. Some images carry a newer qemu-utils from backports that
# Breaks qemu-system-common 7.2; rather than downgrade a system package we then unpack the two
# .debs into the cache (their library dependencies are ordinary bookworm packages). QEMU finds
# firmware and modules relative to its binary, so the unpacked tree links the system firmware.
QEMU_LIB_DEPS=(
    libaio1 libbpf1 libcapstone4 libfdt1 libfuse3-3 libglib2.0-0 libgmp10 libgnutls30 libibverbs1
    libjpeg62-turbo libnuma1 libpixman-1-0 libpmem1 libpng16-16 librdmacm1 libsasl2-2 libseccomp2
    libslirp0 liburing2 libvdeplug2 libzstd1 seabios ipxe-qemu qemu-system-data
)
ensure_qemu() {
    if [ -n "${QEMU:-}" ]; then return 0; fi
    if command -v qemu-system-x86_64 >/dev/null; then QEMU=$(command -v qemu-system-x86_64); return 0; fi
    local ver dir tmp
    ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    dir="$CACHE/qemu-$(key_of "$ver")"
    if [ -x "$dir/usr/bin/qemu-system-x86_64" ]; then QEMU="$dir/usr/bin/qemu-system-x86_64"; return 0; fi
    if apt_install qemu-system-x86 && command -v qemu-system-x86_64 >/dev/null; then
        QEMU=$(command -v qemu-system-x86_64); return 0
    fi
    log "qemu-system-x86 not installable system-wide (see $LOGDIR/apt.log); unpacking it into the cache"
    apt_install "${QEMU_LIB_DEPS[@]}" || die "cannot install QEMU's libraries"
    if [ ! -x "$dir/usr/bin/qemu-system-x86_64" ]; then
        tmp="$dir.tmp"; rm -rf "$tmp"; mkdir -p "$tmp/debs"
        (cd "$tmp/debs" && apt-get download "qemu-system-x86=$ver" "qemu-system-common=$ver") \
            >>"$LOGDIR/apt.log" 2>&1 || die "apt-get download qemu-system-x86 failed"
        local d; for d in "$tmp"/debs/*.deb; do dpkg -x "$d" "$tmp"; done
        rm -rf "$tmp/debs" "$tmp/usr/share/qemu"
        ln -s /usr/share/qemu "$tmp/usr/share/qemu"
        ln -s /usr/share/seabios "$tmp/usr/share/seabios"
        mkdir -p "$tmp/usr/lib"; ln -sfn /usr/lib/ipxe "$tmp/usr/lib/ipxe"
        rm -rf "$dir"; mv "$tmp" "$dir"
    fi
    QEMU="$dir/usr/bin/qemu-system-x86_64"
}

# ---------------------------------------------------------------- Xen image
build_xen() {
    local gz=/boot/xen-4.17-amd64.gz
    [ -f "$gz" ] || die "$gz missing"
    XEN_ELF="$CACHE/xen-$(sha256sum "$gz" | cut -c1-12).elf"
    [ -s "$XEN_ELF" ] && return 0
    log "xen: zcat $gz"
    zcat "$gz" >"$XEN_ELF.tmp" && mv "$XEN_ELF.tmp" "$XEN_ELF"
}

# ---------------------------------------------------------------- uncompressed kernel
# Debian's bzImage carries an XZ-compressed vmlinux. Under TCG, unpacking it costs Xen (for
# dom0) and libxl in dom0 (for every xl create) tens of seconds; both accept the ELF vmlinux
# directly, so unpack it once on the host.
build_vmlinux() {
    local off
    VMLINUX="$CACHE/vmlinux-$KVER-$(sha256sum "$VMLINUZ" | cut -c1-12).elf"
    [ -s "$VMLINUX" ] && return 0
    log "vmlinux: unpacking the ELF kernel from $VMLINUZ"
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$VMLINUZ" | head -1 | cut -d: -f1)
    [ -n "$off" ] || die "no XZ stream in $VMLINUZ"
    # xz stops after the stream; tail then dies of SIGPIPE, which is fine (pipefail is on).
    { tail -c +"$((off + 1))" "$VMLINUZ" || true; } | xz -dc --single-stream >"$VMLINUX.tmp" || die "cannot unpack $VMLINUZ"
    [ "$(head -c 4 "$VMLINUX.tmp" | od -An -c | tr -d ' ')" = '177ELF' ] || die "unpacked kernel is not an ELF file"
    mv "$VMLINUX.tmp" "$VMLINUX"
}

# ---------------------------------------------------------------- modules
# mod_closure MODULE... -> the module files (absolute, host paths) to insmod, in order.
mod_closure() {
    local m
    for m in "$@"; do
        modprobe -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
    done | awk '!seen[$0]++'
}

# ---------------------------------------------------------------- dom0 root filesystem
# qemu-system-xen: the device model libxl starts for a guest with a qusb controller (QEMU's
# own usbif backend, which the qusb round serves pvusb-frontend from).
DOM0_PACKAGES=xen-utils-4.17,xenstore-utils,kmod,busybox,procps,iproute2,usbutils,coreutils,qemu-system-xen
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}

build_rootfs_tree() { # $1 = target dir
    local t=$1
    nice -n 10 debootstrap --variant=minbase --include="$DOM0_PACKAGES" bookworm "$t" "$DEBIAN_MIRROR" \
        >>"$LOGDIR/debootstrap.log" 2>&1 || die "debootstrap failed (see $LOGDIR/debootstrap.log)"
    cat >"$t/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $DEBIAN_SECURITY bookworm-security main
EOF
    # No service may start inside the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$t/usr/sbin/policy-rc.d"; chmod +x "$t/usr/sbin/policy-rc.d"
    mount -t proc proc "$t/proc"
    local rc=0
    chroot "$t" env DEBIAN_FRONTEND=noninteractive sh -c \
        'apt-get update -q && apt-get -y -q --no-install-recommends upgrade && apt-get clean' \
        >>"$LOGDIR/debootstrap.log" 2>&1 || rc=$?
    umount "$t/proc"
    [ "$rc" -eq 0 ] || die "dom0 rootfs upgrade failed (see $LOGDIR/debootstrap.log)"
    rm -f "$t/usr/sbin/policy-rc.d"
    rm -rf "$t/usr/share/doc" "$t/usr/share/man" "$t/usr/share/locale" "$t/var/lib/apt/lists"/*
    # The VMs' kernel and its modules (dom0 and the guest boot the same vmlinuz).
    mkdir -p "$t/lib/modules" "$t/boot"
    cp -a "/lib/modules/$KVER" "$t/lib/modules/"
    rm -f "$t/lib/modules/$KVER/build" "$t/lib/modules/$KVER/source"
    cp "$VMLINUZ" "$t/boot/vmlinuz"
    echo dom0 >"$t/etc/hostname"
    mkdir -p "$t/e2e"
    # Guest consoles go to files dom0 can copy out.
    if grep -q '^#\?XENCONSOLED_ARGS' "$t/etc/default/xen"; then
        sed -i 's|^#\?XENCONSOLED_ARGS=.*|XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"|' "$t/etc/default/xen"
    else
        echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >>"$t/etc/default/xen"
    fi
}

build_rootfs() {
    local key
    key=$(key_of rootfs-v1 "$KVER" "$(pkg_version "linux-image-$KVER")" "$DOM0_PACKAGES" \
        "$(fn_text build_rootfs_tree)")
    ROOT_IMG="$CACHE/dom0-root-$key.ext4"
    [ -s "$ROOT_IMG" ] && return 0
    log "dom0 rootfs: debootstrap bookworm minbase + security updates (first run only, ~2-4 min)"
    local t="$CACHE/dom0-root-$key.tree"
    rm -rf "$t"; mkdir -p "$t"
    build_rootfs_tree "$t"
    rm -f "$ROOT_IMG.tmp"
    nice -n 10 mkfs.ext4 -q -F -L dom0root -d "$t" "$ROOT_IMG.tmp" 2G >/dev/null || die "mkfs.ext4 -d dom0 root failed"
    mv "$ROOT_IMG.tmp" "$ROOT_IMG"
    rm -rf "$t"
}

# ---------------------------------------------------------------- dom0 loader initramfs
LOADER_MODULES=(virtio_pci virtio_blk crc32c_generic ext4)
build_loader() {
    local key
    key=$(key_of loader-v1 "$KVER" "$(pkg_version busybox-static)" "$(cat "$HERE/loader-init.sh")" \
        "${LOADER_MODULES[*]}")
    LOADER="$CACHE/loader-$key.cpio.gz"
    [ -s "$LOADER" ] && return 0
    log "dom0 loader initramfs"
    local t="$CACHE/loader-$key.tree" f
    rm -rf "$t"; mkdir -p "$t"/{bin,dev,proc,sys,newroot,modules}
    cp /bin/busybox "$t/bin/busybox"
    cp "$HERE/loader-init.sh" "$t/init"; chmod +x "$t/init"
    : >"$t/modules/order"
    while read -r f; do
        cp "$f" "$t/modules/"; echo "/modules/${f##*/}" >>"$t/modules/order"
    done < <(mod_closure "${LOADER_MODULES[@]}")
    (cd "$t" && find . | cpio -o -H newc --quiet | gzip -1) >"$LOADER.tmp" && mv "$LOADER.tmp" "$LOADER"
    rm -rf "$t"
}

# ---------------------------------------------------------------- stock xen-hcd.ko
build_xen_hcd() {
    local src=/usr/src/linux-source-6.1.tar.xz key
    [ -f "$src" ] || die "$src missing (linux-source-6.1)"
    key=$(key_of xen-hcd-v1 "$KVER" "$(pkg_version linux-source-6.1)" "$(pkg_version "linux-headers-$KVER")" \
        "$(cat "$HERE/xen-hcd/Kbuild")")
    XEN_HCD_KO="$CACHE/xen-hcd-$key.ko"
    [ -s "$XEN_HCD_KO" ] && return 0
    log "xen-hcd.ko: extracting drivers/usb/host/xen-hcd.c from linux-source-6.1, building against linux-headers-$KVER"
    local t="$CACHE/xen-hcd-$key.build"
    rm -rf "$t"; mkdir -p "$t"
    nice -n 10 tar -xJf "$src" -C "$t" --strip-components=4 --wildcards '*/drivers/usb/host/xen-hcd.c' \
        || die "cannot extract xen-hcd.c"
    cp "$HERE/xen-hcd/Kbuild" "$t/Kbuild"
    nice -n 10 make -C "/lib/modules/$KVER/build" M="$t" modules >"$LOGDIR/xen-hcd-build.log" 2>&1 \
        || die "xen-hcd.ko build failed (see $LOGDIR/xen-hcd-build.log)"
    modinfo -F vermagic "$t/xen-hcd.ko" | grep -q "^$KVER " || die "xen-hcd.ko vermagic does not match $KVER"
    cp "$t/xen-hcd.ko" "$XEN_HCD_KO.tmp" && mv "$XEN_HCD_KO.tmp" "$XEN_HCD_KO"
    rm -rf "$t"
}

# ---------------------------------------------------------------- fpu-canary
# A static C program run in dom0 and in the guest at once: does each vCPU keep its own SSE
# registers across vCPU switches? (See fpu-canary/fpu-canary.c and README "Pitfalls".)
build_fpu_canary() {
    local src="$HERE/fpu-canary/fpu-canary.c"
    FPU_CANARY="$CACHE/fpu-canary-$(key_of fpu-canary-v1 "$(pkg_version gcc)" "$(pkg_version libc6-dev)" "$(cat "$src")")"
    [ -x "$FPU_CANARY" ] && return 0
    gcc -O1 -static -msse4.2 -Wall -o "$FPU_CANARY.tmp" "$src" || die "cannot build fpu-canary"
    mv "$FPU_CANARY.tmp" "$FPU_CANARY"
}

# pcm-play: a static ALSA player for the guest (busybox has no aplay), which drives QEMU's
# usb-audio with isochronous OUT transfers through the whole stack.
build_pcm_play() {
    local src="$HERE/pcm-play/pcm-play.c"
    PCM_PLAY="$CACHE/pcm-play-$(key_of pcm-play-v1 "$(pkg_version gcc)" "$(pkg_version libc6-dev)" "$(cat "$src")")"
    [ -x "$PCM_PLAY" ] && return 0
    gcc -O1 -static -Wall -o "$PCM_PLAY.tmp" "$src" || die "cannot build pcm-play"
    mv "$PCM_PLAY.tmp" "$PCM_PLAY"
}

# ---------------------------------------------------------------- guest initramfs
# Modules the guest agent may load; the closure's order file lets busybox insmod them in order.
# The frontend grants its rings through /dev/xen/gntalloc and signals through /dev/xen/evtchn,
# both modules in Debian's kernel. (ehci_pci only for --selftest-agent, where the stick sits
# on the VM's own EHCI; usbhid, hid_generic and evdev for the USB keyboard of the restart steps.)
GUEST_MODULES=(vhci_hcd usb_storage sd_mod xen_gntalloc xen_gntdev xen_evtchn ehci_pci snd_usb_audio
    usbhid hid_generic evdev)

# copy_with_libs BINARY DESTROOT DESTPATH: a dynamic binary plus the shared objects it needs.
copy_with_libs() {
    local bin=$1 root=$2 dest=$3 lib
    mkdir -p "$root$(dirname "$dest")"
    cp "$bin" "$root$dest"
    if ldd "$bin" >/dev/null 2>&1; then
        for lib in $(ldd "$bin" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'); do
            mkdir -p "$root$(dirname "$lib")"
            [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
        done
    fi
}

# strip_debug FILE: drop debug info (release builds carry line tables: ~20 MB a binary, which
# TCG then has to load); symbols stay for backtraces.
strip_debug() { objcopy --strip-debug "$1" 2>/dev/null || true; }

# The part of the guest initramfs that does not change between runs.
build_guest_base() {
    local key
    key=$(key_of guest-base-v1 "$KVER" "$(pkg_version busybox-static)" "$(pkg_version xenstore-utils)" \
        "${GUEST_MODULES[*]}" "$(fn_text copy_with_libs)")
    GUEST_BASE="$CACHE/guest-base-$key"
    [ -d "$GUEST_BASE" ] && return 0
    log "guest initramfs base: busybox, xenstore clients, modules"
    local t="$GUEST_BASE.tmp" f m
    rm -rf "$t"; mkdir -p "$t"/{bin,sbin,dev,proc,sys,tmp,run,mnt,etc,lib/modules/order}
    cp /bin/busybox "$t/bin/busybox"
    copy_with_libs /usr/bin/xenstore "$t" /bin/xenstore
    for f in read write ls list rm exists watch chmod; do ln -s xenstore "$t/bin/xenstore-$f"; done
    for m in "${GUEST_MODULES[@]}"; do
        : >"$t/lib/modules/order/$m"
        while read -r f; do
            [ -e "$t$f" ] || { mkdir -p "$t$(dirname "$f")"; cp "$f" "$t$f"; }
            echo "$f" >>"$t/lib/modules/order/$m"
        done < <(mod_closure "$m")
    done
    mv "$t" "$GUEST_BASE"
}

# build_guest_initrd OUT FRONTEND_BIN|"" [LOCAL_CMDS]: base + agent + xen-hcd.ko + our
# frontend when given (+ the selftest command list).
build_guest_initrd() {
    local out=$1 fe=$2 cmds=${3:-} t
    t=$(mktemp -d "$RUNDIR/guest-initrd.XXXXXX")
    cp -a "$GUEST_BASE/." "$t/"
    cp "$HERE/scenario-guest.sh" "$t/init"; chmod +x "$t/init"
    mkdir -p "$t/lib/modules/extra"
    cp "$XEN_HCD_KO" "$t/lib/modules/extra/xen-hcd.ko"
    cp "$FPU_CANARY" "$t/bin/fpu-canary"
    cp "$PCM_PLAY" "$t/bin/pcm-play"
    # xen-hcd needs usbcore: make it loadable as "xen_hcd" with the vhci closure's usb core.
    grep -E '/(usb-common|usbcore)\.ko$' "$t/lib/modules/order/vhci_hcd" >"$t/lib/modules/order/xen_hcd"
    echo /lib/modules/extra/xen-hcd.ko >>"$t/lib/modules/order/xen_hcd"
    if [ -n "$fe" ]; then
        copy_with_libs "$fe" "$t" /bin/pvusb-frontend
        strip_debug "$t/bin/pvusb-frontend"
    fi
    [ -n "$cmds" ] && cp "$cmds" "$t/etc/e2e-local.cmds"
    printf 'FRONTEND_ARGS="%s"\nRUST_LOG="%s"\n' "${E2E_FRONTEND_ARGS:---platform xen}" "${RUST_LOG:-info}" >"$t/etc/e2e.env"
    (cd "$t" && find . | cpio -o -H newc --quiet) >"$out"
    rm -rf "$t"
}
