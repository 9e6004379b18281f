#!/usr/bin/env bash
# Real-Xen end-to-end test (issue 9): Xen 4.17 + a Debian 12 dom0 + a PV guest booted under
# QEMU (TCG) with an emulated USB stick, everything built from Debian packages and cached
# under target/xen-e2e/. dom0 runs scenario-dom0.sh, the guest runs scenario-guest.sh as its
# agent; results come back in an ext4 payload disk and are printed as one summary table.
#
# Usage: tests/xen-e2e/run.sh [options]
#   --pvusb-dir DIR     where pvusb-backend, pvusb-frontend, xl-usb are looked for
#                       (default: target/x86_64-unknown-linux-gnu/release)
#   --backend PATH | --frontend PATH | --xl-usb PATH   override one binary
#   --build-pvusb       build the three static binaries first (cargo, nice'd, in the target
#                       directory target/xen-e2e/cargo, which then is the --pvusb-dir)
#   --require-pvusb     a missing pvusb binary fails the run (default: boot smoke only)
#   --timeout SECS      global QEMU timeout (default 1500)
#   --build-only        build/cache everything, do not boot
#   --selftest-agent    check the guest agent's disk commands without Xen: plain QEMU boots the
#                       guest kernel + initramfs with the stick on its own EHCI and runs
#                       selftest-agent.cmds (a USB unplug/replug included)
#   --keep              keep the per-run directory (payload image, stick image)
# Environment: PVUSB_SKIP_APT=1 (never apt-get), DEBIAN_MIRROR, DEBIAN_SECURITY,
#   E2E_IO_MB (guest write/read test size, default 16), E2E_BACKEND_ARGS (default
#   "--platform xen"), E2E_FRONTEND_ARGS (default "--platform xen"), RUST_LOG (default info),
#   E2E_ORDER (stock-first | ours-first, default stock-first), E2E_XEN_EAGER_FPU (default 1;
#   0 = Xen's lazy FPU switching, broken under TCG), E2E_FPU_CANARY_SECS (default 20, 0 = skip),
#   E2E_QEMU_CPU (default max without AVX).
# Exit status: 0 all run steps passed (and, with --require-pvusb, none skipped), 1 otherwise.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$ROOT/target/xen-e2e"
CACHE="$OUT/cache"
LOGDIR="$OUT/logs"
RUNDIR="$OUT/run"
T_START=$(date +%s)

log() { printf '[xen-e2e %4ss] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

PVUSB_DIR="$ROOT/target/x86_64-unknown-linux-gnu/release"
BACKEND="" FRONTEND="" XLUSB="" BUILD_PVUSB=0 REQUIRE_PVUSB=0 TIMEOUT=1500 BUILD_ONLY=0 KEEP=0 SELFTEST=0
while [ $# -gt 0 ]; do
    case "$1" in
        --pvusb-dir) PVUSB_DIR=$2; shift ;;
        --backend) BACKEND=$2; shift ;;
        --frontend) FRONTEND=$2; shift ;;
        --xl-usb) XLUSB=$2; shift ;;
        --build-pvusb) BUILD_PVUSB=1 ;;
        --require-pvusb) REQUIRE_PVUSB=1 ;;
        --timeout) TIMEOUT=$2; shift ;;
        --build-only) BUILD_ONLY=1 ;;
        --selftest-agent) SELFTEST=1 ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, apt-get)"
mkdir -p "$CACHE" "$LOGDIR" "$RUNDIR"
# One run at a time: runs share the cache, the run directory and the logs.
exec 9>"$OUT/.lock"
flock -n 9 || die "another tests/xen-e2e/run.sh is running (lock $OUT/.lock)"
# shellcheck source=lib/build.sh
. "$HERE/lib/build.sh"

# ---------------------------------------------------------------- build / cache
ensure_host_packages
if [ "$BUILD_PVUSB" = 1 ]; then
    log "building static pvusb binaries"
    # Its own target directory: no wait for other cargo builds' lock, no rebuild of theirs.
    (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" nice -n 10 cargo build --release \
        --target x86_64-unknown-linux-gnu --target-dir "$OUT/cargo" \
        -p pvusb-backend -p pvusb-frontend -p xl-usb) \
        || die "cargo build of the pvusb binaries failed"
    PVUSB_DIR="$OUT/cargo/x86_64-unknown-linux-gnu/release"
fi
: "${BACKEND:=$PVUSB_DIR/pvusb-backend}" "${FRONTEND:=$PVUSB_DIR/pvusb-frontend}" "${XLUSB:=$PVUSB_DIR/xl-usb}"
for v in BACKEND FRONTEND XLUSB; do
    if [ -x "${!v}" ]; then log "pvusb: using ${!v}"; else log "pvusb: ${!v} absent"; printf -v "$v" ''; fi
done

build_xen_hcd
build_fpu_canary
build_pcm_play
build_guest_base
if [ "$SELFTEST" = 1 ]; then
    rm -rf "$RUNDIR"; mkdir -p "$RUNDIR"
    build_guest_initrd "$RUNDIR/initrd.cpio" "" "$HERE/selftest-agent.cmds"
    truncate -s 64M "$RUNDIR/stick.img"
    SERIAL="$LOGDIR/selftest-serial.log"
    log "selftest: guest agent under plain QEMU (no Xen); serial: $SERIAL"
    rc=0
    nice -n 10 timeout -k 10 600 "$QEMU" -accel tcg -cpu max -m 512 -smp 1 -nographic -no-reboot -nic none \
        -kernel "$VMLINUZ" -initrd "$RUNDIR/initrd.cpio" -append "console=ttyS0 rdinit=/init e2e.local panic=-1" \
        -device usb-ehci,id=usbc -drive "if=none,id=stick,file=$RUNDIR/stick.img,format=raw" \
        -device usb-storage,bus=usbc.0,drive=stick,serial=PVUSB0001 </dev/null >"$SERIAL" 2>&1 || rc=$?
    want=$(grep -c . "$HERE/selftest-agent.cmds"); got=0 bad=0
    printf '\n%-22s %-6s %s\n' COMMAND STATUS ANSWER
    while read -r _ _ st rest; do
        got=$((got + 1)); [ "$st" = 0 ] && s=PASS || { s=FAIL; bad=$((bad + 1)); }
        printf '%-22s %-6s %s\n' "${rest%% :: *}" "$s" "${rest#* :: }"
    done < <(grep -a '^E2E-RESULT ' "$SERIAL" | tr -d '\r')
    [ "$KEEP" = 1 ] || rm -rf "$RUNDIR"
    if [ "$rc" -eq 0 ] && [ "$got" -eq "$want" ] && [ "$bad" -eq 0 ]; then
        log "selftest: PASS ($got commands)"; exit 0
    fi
    log "selftest: FAIL (QEMU rc=$rc, $got of $want answers, $bad failed)"; exit 1
fi
build_xen
build_vmlinux
build_loader
build_rootfs
T_BUILT=$(date +%s)
log "build/cache done in $((T_BUILT - T_START)) s (kernel $KVER, QEMU $QEMU)"
[ "$BUILD_ONLY" = 1 ] && exit 0

# ---------------------------------------------------------------- per-run payload
rm -rf "$RUNDIR" "$LOGDIR/results"; mkdir -p "$RUNDIR"
P="$RUNDIR/payload"
mkdir -p "$P"/{bin,guest,results}
cp "$HERE/dom0-init.sh" "$HERE/scenario-dom0.sh" "$P/"
cp "$HERE/domu.cfg" "$P/guest/domu.cfg"
cp "$VMLINUX" "$P/guest/vmlinux"
[ -n "$BACKEND" ] && cp "$BACKEND" "$P/bin/pvusb-backend" && strip_debug "$P/bin/pvusb-backend"
[ -n "$XLUSB" ] && cp "$XLUSB" "$P/bin/xl-usb" && strip_debug "$P/bin/xl-usb"
cp "$FPU_CANARY" "$P/bin/fpu-canary"
build_guest_initrd "$P/guest/initrd.cpio" "$FRONTEND"
PAYLOAD_IMG="$RUNDIR/payload.ext4"
STICK_IMG="$RUNDIR/stick.img"
truncate -s 64M "$STICK_IMG"
# A second stick on the xHCI controller (SuperSpeed: on its USB 3 bus), where usbfs withholds
# BULK_CONTINUATION: step 4/io-ours-xhci reads it through split chains.
XSTICK_IMG="$RUNDIR/xstick.img"
truncate -s 64M "$XSTICK_IMG"

# ---------------------------------------------------------------- boot
SERIAL="$LOGDIR/serial.log"
# AVX off: with the full `max` model, static binaries (busybox in the guest, the pvusb daemons
# in dom0) segfaulted now and then at the same instructions, as if vector state were lost
# across PV context switches under TCG. E2E_QEMU_CPU=max restores the recipe's model.
QEMU_CPU=${E2E_QEMU_CPU:-max,avx=off,avx2=off,fma=off,f16c=off,vaes=off,vpclmulqdq=off}
# Eager FPU switching in Xen (see README "Pitfalls"): on an AMD CPU model Xen defaults to lazy
# FPU switching for PV vCPUs (CR0.TS set at each vCPU switch, state restored on the #NM trap);
# under TCG that let processes in dom0 and in the guest see other vCPUs' SSE registers now and
# then (heap corruption, segfaults). E2E_XEN_EAGER_FPU=0 restores Xen's default.
XEN_ARGS="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M smap=0 loglvl=all guest_loglvl=all"
[ "${E2E_XEN_EAGER_FPU:-1}" = 1 ] && XEN_ARGS="$XEN_ARGS spec-ctrl=eager-fpu"
QEMU_START=$(date +%s.%N)
{
    printf 'HOST_QEMU_START=%s\nREQUIRE_PVUSB=%s\nHAVE_FRONTEND=%s\n' "$QEMU_START" "$REQUIRE_PVUSB" \
        "$([ -n "$FRONTEND" ] && echo 1 || echo 0)"
    printf 'IO_MB=%s\nBACKEND_ARGS="%s"\nRUST_LOG="%s"\nSCENARIO_DEADLINE=%s\n' "${E2E_IO_MB:-16}" \
        "${E2E_BACKEND_ARGS:---platform xen}" "${RUST_LOG:-info}" "$((TIMEOUT - 90))"
    printf 'ROUND_ORDER=%s\nFPU_CANARY_SECS=%s\n' "${E2E_ORDER:-stock-first}" "${E2E_FPU_CANARY_SECS:-20}"
} >"$P/run.env"
mkfs.ext4 -q -F -L e2e -d "$P" "$PAYLOAD_IMG" 384M >/dev/null || die "mkfs.ext4 payload failed"
# QEMU's monitor, on a free local TCP port (bash reaches it through /dev/tcp, no helper needed).
MON_PORT=""
for _ in 1 2 3 4 5 6 7 8; do
    p=$((30000 + RANDOM % 30000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { MON_PORT=$p; break; }
done
[ -n "$MON_PORT" ] || die "no free local port for QEMU's monitor"
STICK_DEV="usb-storage,id=stickdev,bus=usbc.0,port=1,drive=stick,serial=PVUSB0001"
# host_agent: dom0 asks the host for what only QEMU can do (unplug and replug the stick, a real
# disconnect on dom0's USB bus; a key typed on the USB keyboard) with a line "E2E-HOST <seq> <command>" on its console; each
# sequence number is served once, with a monitor command.
host_agent() {
    local seq cmd m done=" "
    tail -n +1 -F "$SERIAL" 2>/dev/null | grep -a --line-buffered -o 'E2E-HOST [0-9]* [a-z-]*' |
        while read -r _ seq cmd; do
            case "$done" in *" $seq "*) continue ;; esac
            done="$done$seq "
            case "$cmd" in
                usb-unplug) m="device_del stickdev" ;;
                usb-replug) m="device_add $STICK_DEV" ;;
                kbd-type) m="sendkey a" ;;
                *) log "host agent: unknown request '$cmd'"; continue ;;
            esac
            if { exec 3<>"/dev/tcp/127.0.0.1/$MON_PORT"; } 2>/dev/null; then
                printf '%s\n' "$m" >&3; sleep 1; exec 3>&-
                log "host agent: #$seq $cmd -> QEMU monitor: $m"
            else
                log "host agent: #$seq $cmd: QEMU's monitor is unreachable"
            fi
        done
}
: >"$SERIAL"
host_agent &
HOST_AGENT=$!
log "booting Xen + dom0 under QEMU (TCG), timeout ${TIMEOUT}s; serial: $SERIAL"
QEMU_RC=0
nice -n 10 timeout -k 10 "$TIMEOUT" "$QEMU" \
    -accel tcg -cpu "$QEMU_CPU" -m 3072 -smp 2 -nographic -no-reboot -nic none \
    -kernel "$XEN_ELF" \
    -append "$XEN_ARGS" \
    -initrd "$VMLINUX console=hvc0 earlyprintk=xen,$LOADER" \
    -drive "file=$ROOT_IMG,if=virtio,format=raw,snapshot=on" \
    -drive "file=$PAYLOAD_IMG,if=virtio,format=raw" \
    -monitor "tcp:127.0.0.1:$MON_PORT,server=on,wait=off" \
    -device usb-ehci,id=usbc \
    -blockdev "driver=file,filename=$STICK_IMG,node-name=stickfile" \
    -blockdev driver=raw,file=stickfile,node-name=stick \
    -device "$STICK_DEV" \
    -device qemu-xhci,id=xhci -audiodev none,id=snd0 \
    -device usb-audio,id=audio,bus=xhci.0,port=1,audiodev=snd0 \
    -blockdev "driver=file,filename=$XSTICK_IMG,node-name=xstickfile" \
    -blockdev driver=raw,file=xstickfile,node-name=xstick \
    -device usb-storage,id=xstickdev,bus=xhci.0,port=2,drive=xstick,serial=PVUSB0002 \
    -device usb-kbd,id=kbd,bus=xhci.0,port=3 \
    </dev/null >>"$SERIAL" 2>&1 || QEMU_RC=$?
QEMU_END=$(date +%s.%N)
# (The agent's pipeline dies with it; under `set -e` neither kill nor wait may fail the run.)
pkill -P "$HOST_AGENT" 2>/dev/null || true
kill "$HOST_AGENT" 2>/dev/null || true
wait "$HOST_AGENT" 2>/dev/null || true
log "QEMU exited rc=$QEMU_RC after $(awk -v a="$QEMU_START" -v b="$QEMU_END" 'BEGIN{printf "%.0f", b-a}') s"
grep -a '(XEN)' "$SERIAL" >"$LOGDIR/xen.log" || true
grep -av '(XEN)' "$SERIAL" >"$LOGDIR/dom0-console.log" || true

# ---------------------------------------------------------------- results
debugfs -R "rdump /results $LOGDIR" "$PAYLOAD_IMG" >/dev/null 2>&1 || true
SUMMARY="$LOGDIR/results/summary.tsv"
{
    printf 'host/build\tPASS\tcache ready in %ss (kernel %s)\n' "$((T_BUILT - T_START))" "$KVER"
    if [ "$QEMU_RC" = 124 ] || [ "$QEMU_RC" = 137 ]; then
        printf 'host/qemu\tFAIL\tglobal timeout (%ss) killed QEMU\n' "$TIMEOUT"
    else
        printf 'host/qemu\tPASS\tQEMU ended rc=%s in %.0fs\n' "$QEMU_RC" \
            "$(awk -v a="$QEMU_START" -v b="$QEMU_END" 'BEGIN{print b-a}')"
    fi
    segv=$(cat "$LOGDIR"/results/dom0-dmesg.log "$LOGDIR"/results/guest-*.log 2>/dev/null | grep -ac 'segfault at' || true)
    printf 'host/segfaults\tINFO\t%s segfault(s) in dom0 dmesg + guest console (-cpu %s)\n' "$segv" "$QEMU_CPU"
    if [ -s "$SUMMARY" ]; then
        cat "$SUMMARY"
        grep -q '^dom0/finished' "$SUMMARY" || printf 'dom0/finished\tFAIL\tscenario did not finish (see %s)\n' "$SERIAL"
    else
        printf 'dom0/results\tFAIL\tno results from dom0 (see %s)\n' "$SERIAL"
    fi
} >"$LOGDIR/summary.tsv"
[ "$KEEP" = 1 ] || rm -rf "$RUNDIR"

# One table: step | status | detail. SKIP = not run (binary missing or an earlier step failed).
FAILS=0 SKIPS=0
printf '\n%-34s %-6s %s\n' STEP STATUS DETAIL
printf '%.0s-' {1..100}; echo
while IFS=$'\t' read -r step status detail; do
    printf '%-34s %-6s %s\n' "$step" "$status" "$detail"
    case "$status" in FAIL) FAILS=$((FAILS + 1)) ;; SKIP) SKIPS=$((SKIPS + 1)) ;; esac
done <"$LOGDIR/summary.tsv"
printf '%.0s-' {1..100}; echo
T_END=$(date +%s)
RESULT=PASS
[ "$FAILS" -gt 0 ] && RESULT=FAIL
[ "$REQUIRE_PVUSB" = 1 ] && [ "$SKIPS" -gt 0 ] && RESULT=FAIL
printf 'xen-e2e: %s — %d failed, %d not run; total %ss (build %ss); logs in %s\n' \
    "$RESULT" "$FAILS" "$SKIPS" "$((T_END - T_START))" "$((T_BUILT - T_START))" "$LOGDIR"
[ "$RESULT" = PASS ]
