#!/bin/bash
# The dom0 side of the real-Xen end-to-end scenario (issue 9), run by dom0-init.sh.
#
# Every step records one line "id<TAB>PASS|FAIL|SKIP|INFO<TAB>detail" in
# /e2e/results/summary.tsv; run.sh prints them as the summary table. A step whose pvusb
# binary is absent is recorded as SKIP "not run (binary missing: ...)"; a step whose
# prerequisite failed as SKIP "not run (after failed ...)". No step may block: every wait has a
# deadline and every external command that could hang runs under timeout(1).
#
# The guest runs scenario-guest.sh as an agent; we talk to it through xenstore keys under its
# own /local/domain/<id>/data/e2e (cmd: "<seq> <command> [args]"; it answers out, then
# ack: "<seq> <rc>").
#
# Assumed pvusb command lines (override with the environment variables in run.env):
#   pvusb-backend --platform xen              long-running, foreground, logs to stderr;
#                                             serves every vusb backend of this domain
#   pvusb-frontend --platform xen             in the guest, long-running, foreground
#   xl-usb usbctrl-attach <dom> type=pv version=2 ports=4
#   xl-usb usbdev-attach <dom> hostbus=1 hostaddr=<the stick's devnum, 2 until replugged>
#   xl-usb usbdev-detach <dom> <ctrl> <port>
#   xl-usb usbctrl-detach <dom> <ctrl>
#   xl-usb usb-list <dom>
# No "set -u": one unset variable in one step must not end the whole scenario.
E2E=${E2E:-/e2e}
RES=$E2E/results
SUM=$RES/summary.tsv
BIN=$E2E/bin
. "$E2E/run.env"
: "${BACKEND_ARGS:=--platform xen}" "${IO_MB:=16}" "${NATIVE_MB:=$IO_MB}"
export RUST_LOG=${RUST_LOG:-info} RUST_BACKTRACE=1
mkdir -p "$RES/steps"
GUEST=domu
: >"$SUM"

# fork+exec is slow in a PV dom0 under TCG (page-table hypercalls, emulated): the helpers
# below use bash builtins only. now: UP = uptime text, UPCS = uptime in centiseconds.
now() { read -r UP _ </proc/uptime; UPCS=$((${UP%.*} * 100 + 10#${UP#*.})); }
# el T0CS: EL = seconds since T0CS (one decimal).
el() { now; local d=$((UPCS - $1)); printf -v EL '%d.%d' $((d / 100)) $((d % 100 / 10)); }
# since_qemu: SQ = seconds since run.sh started QEMU (host and dom0 clocks both follow the RTC).
since_qemu() {
    local h=${HOST_QEMU_START%.*} hf=${HOST_QEMU_START#*.} n=${EPOCHREALTIME%.*} nf=${EPOCHREALTIME#*.}
    local d=$(( (n * 1000 + 10#${nf:0:3}) - (h * 1000 + 10#${hf:0:3}) ))
    printf -v SQ '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}
# nap SECONDS: sleep without a fork (read with a timeout on a pipe nobody writes to).
NAPFD=""
exec {NAPFD}<> <(:) || NAPFD=""
nap() { if [ -n "$NAPFD" ]; then read -rt "$1" -u "$NAPFD" _ || true; else sleep "$1"; fi; }
mbps() { awk -v mb="$1" -v t="$2" 'BEGIN { if (t <= 0) t = 0.01; printf "%.2f", mb / t }'; }
kv() { local w; for w in $2; do [ "${w%%=*}" = "$1" ] && { echo "${w#*=}"; return; }; done; }
say() { now; echo "=== $UP $*"; }

record() {
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$SUM"
    sync "$SUM"
    say "[$1] $2 $3"
}

# step ID FUNCTION [ARGS]: run a step in this shell (it keeps state), record PASS/FAIL with
# its DETAIL and duration. Returns the function's status.
step() {
    local id=$1 t0 rc=0; shift
    DETAIL=""; now; t0=$UPCS
    say ">>> $id"
    local lf="steps/${id//\//_}.log"
    "$@" >"$RES/$lf" 2>&1 || rc=$?
    sed 's/^/    /' "$RES/$lf"
    el "$t0"
    if [ "$rc" -eq 0 ]; then record "$id" PASS "$DETAIL (${EL}s)"
    else record "$id" FAIL "$DETAIL (${EL}s; log $lf)"; fi
    return "$rc"
}
skip() { record "$1" SKIP "not run ($2)"; }
info() { record "$1" INFO "$2"; }

# missing BIN...: MISSING = "binary missing: a, b" for the absent ones; status 0 if any is absent.
missing() {
    local b m=""
    for b in "$@"; do
        case "$b" in
            pvusb-frontend) [ "${HAVE_FRONTEND:-0}" = 1 ] || m="$m${m:+, }$b" ;;
            *) [ -x "$BIN/$b" ] || m="$m${m:+, }$b" ;;
        esac
    done
    MISSING="binary missing: $m"
    [ -n "$m" ]
}

# wait_for TIMEOUT CMD...: poll CMD every 0.5 s until it succeeds; status 1 on timeout.
wait_for() {
    local deadline; now; deadline=$((UPCS + $1 * 100)); shift
    until "$@"; do
        now; [ "$UPCS" -gt "$deadline" ] && return 1
        nap 0.5
    done
}

# ---------------------------------------------------------------- guest agent channel
GSEQ=0 GDOMID="" GDATA="" GOUT=""
guest_ack_is() { local a; a=$(xenstore-read "$GDATA/ack" 2>/dev/null) && [ "${a%% *}" = "$GSEQ" ]; }
# guest_ack_watch: like guest_ack_is, but first block (<= 3 s) until ack changes.
guest_ack_watch() { guest_ack_is || { timeout 3 xenstore-watch -n 2 "$GDATA/ack" >/dev/null 2>&1; guest_ack_is; }; }
# guest_cmd TIMEOUT COMMAND [ARGS]: GOUT = the guest's answer; status = the guest's status
# (124 if it did not answer in time).
guest_cmd() {
    local t=$1 a; shift
    GSEQ=$((GSEQ + 1)); GOUT=""
    echo "guest_cmd #$GSEQ: $*"
    xenstore-write "$GDATA/cmd" "$GSEQ $*" || { GOUT="xenstore-write failed"; return 125; }
    if ! wait_for "$t" guest_ack_watch; then GOUT="guest did not answer '$*' within ${t}s"; echo "$GOUT"; return 124; fi
    a=$(xenstore-read "$GDATA/ack"); GOUT=$(xenstore-read "$GDATA/out" 2>/dev/null)
    echo "guest #$GSEQ rc=${a#* }: $GOUT"
    return "${a#* }"
}

# ---------------------------------------------------------------- smoke steps (no pvusb needed)
s_dom0_boot() {
    DETAIL="dom0 userspace at uptime ${DOM0_UP}s, ${DOM0_SINCE_QEMU}s after QEMU start"
}

s_xen_start() {
    mountpoint -q /proc/xen || mount -t xenfs xenfs /proc/xen || return 1
    grep -q control_d /proc/xen/capabilities || { DETAIL="not the control domain"; return 1; }
    modprobe -a xen_privcmd xen_gntdev xen_gntalloc xen_evtchn || return 1
    ls -l /dev/xen
    timeout 60 /etc/init.d/xen start || { DETAIL="/etc/init.d/xen start failed"; return 1; }
    pgrep -l xenstored && pgrep -l xenconsoled || { DETAIL="xenstored or xenconsoled not running"; return 1; }
    DETAIL="xenstored+xenconsoled up, dom0 name $(xenstore-read /local/domain/0/name)"
}

s_xl_info() {
    timeout 30 xl info >"$RES/xl-info.txt" || return 1
    cat "$RES/xl-info.txt"
    DETAIL=$(awk -F' *: ' '/^(xen_version|nr_cpus|total_memory|free_memory|xen_caps)/ {printf "%s=%s ", $1, $2}' "$RES/xl-info.txt")
    grep -q '^xen_version *: 4\.17' "$RES/xl-info.txt"
}

STICK_DEV=""
stick_ready() {
    local d
    [ -e /sys/bus/usb/devices/1-1/idVendor ] || return 1
    for d in /sys/block/sd*; do
        [ -e "$d" ] || continue
        case "$(readlink -f "$d")" in */1-1/1-1:1.0/*) STICK_DEV=${d##*/}; return 0 ;; esac
    done
    return 1
}
s_usb_stick() {
    modprobe -a ehci_pci xhci_pci usb_storage sd_mod || return 1
    wait_for 30 stick_ready || { DETAIL="no stick at 1-1 with a block device after 30s"; lsusb; return 1; }
    local p=/sys/bus/usb/devices/1-1 id speed
    id="$(cat $p/idVendor):$(cat $p/idProduct)"; speed=$(cat $p/speed)
    lsusb | tee "$RES/lsusb.txt"
    [ -c /dev/bus/usb/001/002 ] || { DETAIL="/dev/bus/usb/001/002 missing"; return 1; }
    grep -q "Bus 001 Device 002: ID 46f4:0001" "$RES/lsusb.txt" || { DETAIL="lsusb does not show 46f4:0001 at 001/002"; return 1; }
    DETAIL="1-1 $id speed=$speed /dev/bus/usb/001/002 -> /dev/$STICK_DEV ($(($(cat /sys/block/$STICK_DEV/size) / 2048)) MiB)"
    [ "$id" = 46f4:0001 ] && [ "$speed" = 480 ]
}

NATIVE_READ=""
s_native_read() {
    local t0 t1
    sync; echo 3 >/proc/sys/vm/drop_caches
    now; t0=$UP
    timeout 300 dd if="/dev/$STICK_DEV" of=/dev/null bs=1M count="$NATIVE_MB" iflag=direct || return 1
    now; t1=$UP
    NATIVE_READ=$(mbps "$NATIVE_MB" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
    DETAIL="dom0 reads /dev/$STICK_DEV directly: $NATIVE_MB MiB at $NATIVE_READ MB/s (O_DIRECT, bs=1M)"
}

guest_ready() { [ -n "$(xenstore-read "$GDATA/ready" 2>/dev/null)" ]; }
guest_domid() { GDOMID=$(xl domid "$GUEST" 2>/dev/null) && [ -n "$GDOMID" ]; }
procs() { ps -eo pid,ppid,stat,wchan:28,etime,args; }
# xl create runs in the background and is judged by its result (the domain exists, the agent
# answers, xl's exit status), not by when it returns: once (cold run under load) the xl
# parent never returned although the guest was up, and a timeout then lost the whole guest.
# -e: no monitoring daemon (we destroy the guest ourselves at the end).
# s_guest_create [CFG]: creates $GUEST from CFG (default the payload's domu.cfg).
s_guest_create() {
    local t0 tc xpid rc cfg=${1:-$E2E/guest/domu.cfg}; now; t0=$UPCS
    xl create -e "$cfg" >"$RES/xl-create-$GUEST.log" 2>&1 &
    xpid=$!
    wait_for 300 guest_domid || { el "$t0"; DETAIL="no domain $GUEST ${EL}s after xl create"; procs; return 1; }
    GDATA=/local/domain/$GDOMID/data/e2e
    wait_for 400 guest_ready || { el "$t0"; DETAIL="domid $GDOMID: guest agent not ready ${EL}s after xl create"; procs; return 1; }
    el "$t0"; since_qemu
    DETAIL="domid $GDOMID, agent ready ${EL}s after xl create, ${SQ}s after QEMU start ($(xenstore-read "$GDATA/ready"))"
    if kill -0 "$xpid" 2>/dev/null; then
        echo "xl create (pid $xpid) has not returned although the guest is up:"; procs
        DETAIL="$DETAIL; xl create still running"
    else
        wait "$xpid"; rc=$?
        cat "$RES/xl-create-$GUEST.log"
        [ "$rc" -eq 0 ] || { DETAIL="$DETAIL; but xl create exited $rc"; return 1; }
    fi
}

s_guest_drivers() {
    guest_cmd 60 probe; local rc=$?
    DETAIL="$GOUT"
    return "$rc"
}

s_xenstore_channel() {
    # The guest wrote measurements under its own data/e2e/m; dom0 reads them back.
    local keys; keys=$(xenstore-list "$GDATA/m" 2>/dev/null | tr '\n' ' ')
    xenstore-ls -fp "/local/domain/$GDOMID/data" >"$RES/guest-data-xenstore.txt" 2>&1
    DETAIL="guest keys under /local/domain/$GDOMID/data/e2e/m: $keys"
    [ -n "$keys" ]
}

# Both domains run fpu-canary at once (2 workers each, FPU_CANARY_SECS): every vCPU must keep
# its own SSE registers across vCPU switches. Under QEMU TCG with Xen's lazy FPU switching this
# failed (see README "Pitfalls"), and then any program may compute garbage: this step tells
# such an environment fault apart from a pvusb fault.
s_fpu_canary() {
    local secs=${FPU_CANARY_SECS:-20} pid rc0 rcg out0
    [ "$secs" -gt 0 ] 2>/dev/null || { DETAIL="disabled (FPU_CANARY_SECS=$secs)"; return 0; }
    "$BIN/fpu-canary" "$secs" 2 >"$RES/fpu-canary-dom0.txt" 2>&1 &
    pid=$!
    guest_cmd $((secs * 4 + 60)) fpu-canary "$secs" 2; rcg=$?
    wait "$pid"; rc0=$?
    out0=$(cat "$RES/fpu-canary-dom0.txt")
    DETAIL="dom0: $out0; guest: $GOUT"
    [ "$rc0" -eq 0 ] && [ "$rcg" -eq 0 ]
}

# Stock libxl with no usbif backend running: usbctrl-attach writes the keys and then waits for
# the backend to reach InitWait; with none, it gives up after ~10 s. Cleaned up afterwards.
s_xl_attach_waits() {
    local t0 rc=0 be st
    now; t0=$UPCS
    timeout 60 xl usbctrl-attach "$GUEST" type=pv version=2 ports=4 || rc=$?
    local dt; el "$t0"; dt=$EL
    be=$(xenstore-list "/local/domain/0/backend/vusb/$GDOMID" 2>/dev/null | head -1)
    st=$(xenstore-read "/local/domain/0/backend/vusb/$GDOMID/$be/state" 2>/dev/null || echo none)
    xenstore-ls -fp "/local/domain/0/backend/vusb" >"$RES/xenstore-vusb-nobackend.txt" 2>&1
    # Leave no half controller behind for the pvusb rounds. (xl usbctrl-detach would also
    # remove these, after waiting for the absent backend: ~50 s of TCG time.)
    local left=""
    if [ -n "$be" ]; then
        for p in "/local/domain/0/backend/vusb/$GDOMID/$be" "/local/domain/$GDOMID/device/vusb/$be" "/libxl/$GDOMID/device/vusb/$be"; do
            xenstore-exists "$p" 2>/dev/null && { left="$left $p"; xenstore-rm "$p"; }
        done
    fi
    DETAIL="xl usbctrl-attach rc=$rc after ${dt}s; backend/vusb/$GDOMID/${be:-?}/state=$st (waited for a backend); removed:${left:- nothing}"
    [ "$rc" -ne 0 ] && [ "$st" = 1 ]
}

# ---------------------------------------------------------------- pvusb steps (issue 9)
BACKEND_PID="" BACKEND_UP=0 BACKEND_STATUS=""
backend_start() {
    "$BIN/pvusb-backend" $BACKEND_ARGS >>"$RES/pvusb-backend.log" 2>&1 &
    BACKEND_PID=$! BACKEND_UP=1
    nap 2
    kill -0 "$BACKEND_PID" 2>/dev/null || { DETAIL="pvusb-backend exited at once: $(tail -3 "$RES/pvusb-backend.log" | tr '\n' ' ')"; return 1; }
    DETAIL="pvusb-backend $BACKEND_ARGS running (pid $BACKEND_PID)"
}

s_frontend_start() {
    guest_cmd 30 start-frontend; local rc=$?
    DETAIL="$GOUT"; return "$rc"
}

CTRL=""
# new_ctrl: the devid of the newest vusb controller of the guest.
# (Retried, errors kept: once it came back empty right after a successful attach.)
new_ctrl() {
    local i out
    for i in 1 2 3 4 5 6; do
        out=$(xenstore-list "/local/domain/0/backend/vusb/$GDOMID" 2>&1) && [ -n "$out" ] && break
        echo "xenstore-list /local/domain/0/backend/vusb/$GDOMID (try $i): '${out}'" >&2
        nap 0.5
    done
    printf '%s\n' "$out" | grep -E '^[0-9]+$' | sort -n | tail -1
}
# ctrl_connected [DEVID]: backend and frontend of controller DEVID (default $CTRL) are at 4.
ctrl_connected() {
    local c=${1:-$CTRL}
    [ "$(xenstore-read "/local/domain/0/backend/vusb/$GDOMID/$c/state" 2>/dev/null)" = 4 ] &&
        [ "$(xenstore-read "/local/domain/$GDOMID/device/vusb/$c/state" 2>/dev/null)" = 4 ]
}
# s_ctrl_attach TOOL: TOOL is "xl-usb" (ours) or "xl" (stock libxl).
s_ctrl_attach() {
    local tool=$1 cmd rc=0
    if [ "$tool" = xl ]; then
        cmd=(xl -vvv)
        echo "---- before: /libxl/$GDOMID, backend/vusb, userdata"
        xenstore-ls -fp "/libxl/$GDOMID" 2>&1 | grep -v '/device/vbd\|/device/vif\|/device/console' | head -60
        xenstore-ls -fp "/local/domain/0/backend/vusb" 2>&1
        ls -la /var/lib/xen/ 2>&1; cat /var/lib/xen/userdata-d."$GDOMID".*libxl-json 2>&1 | tr -d '\n ' | head -c 4000; echo
    else cmd=("$BIN/xl-usb"); fi
    timeout 60 "${cmd[@]}" usbctrl-attach "$GUEST" type=pv version=2 ports=4 || rc=$?
    [ "$rc" -ge 128 ] && diag_crash "$tool usbctrl-attach" "$rc"
    CTRL=$(new_ctrl)
    xenstore-ls -fp "/local/domain/0/backend/vusb" >&2
    [ "$rc" -eq 0 ] || { DETAIL="$tool usbctrl-attach rc=$rc"; return 1; }
    [ -n "$CTRL" ] || { DETAIL="no backend/vusb/$GDOMID/<devid> after $tool usbctrl-attach"; return 1; }
    if ! wait_for 30 ctrl_connected; then
        DETAIL="controller $CTRL: backend state $(xenstore-read "/local/domain/0/backend/vusb/$GDOMID/$CTRL/state"), frontend state $(xenstore-read "/local/domain/$GDOMID/device/vusb/$CTRL/state" 2>/dev/null) (want 4/4)"
        return 1
    fi
    DETAIL="$tool usbctrl-attach: controller $CTRL connected (backend 4, frontend 4)"
}

# s_second_ctrl: a second controller in the guest connects next to $CTRL, then goes. Each of
# pvusb-frontend's controllers takes 258 pages of the guest's gntalloc limit (1024 by
# default, shared by every gntalloc user); with two pools per controller it took 514, and a
# second controller failed with ENOSPC.
s_second_ctrl() {
    local rc=0 second err
    timeout 60 "$BIN/xl-usb" usbctrl-attach "$GUEST" type=pv version=1 ports=2 || rc=$?
    [ "$rc" -eq 0 ] || { DETAIL="xl-usb usbctrl-attach rc=$rc"; return 1; }
    second=$(new_ctrl)
    if [ -z "$second" ] || [ "$second" = "$CTRL" ]; then DETAIL="no second controller (got '$second')"; return 1; fi
    if ! wait_for 30 ctrl_connected "$second"; then
        err=$(xenstore-read "/local/domain/$GDOMID/error/device/vusb/$second/error" 2>/dev/null)
        DETAIL="controller $second: frontend state $(xenstore-read "/local/domain/$GDOMID/device/vusb/$second/state" 2>/dev/null), frontend error '${err}'"
        "$BIN/xl-usb" usb-list "$GUEST"
        timeout 60 "$BIN/xl-usb" usbctrl-detach "$GUEST" "$second"
        return 1
    fi
    timeout 60 "$BIN/xl-usb" usbctrl-detach "$GUEST" "$second" || rc=$?
    [ "$rc" -eq 0 ] || { DETAIL="controller $second connected; xl-usb usbctrl-detach rc=$rc"; return 1; }
    DETAIL="controller $second connected next to $CTRL, then detached"
}

# diag_crash WHAT RC: a tool died of a signal. Record what crashed (core files), whether other
# programs crash now too, and the state, so the cause can be told apart from the symptom.
diag_crash() {
    local i c
    echo "---- diag: $1 died rc=$2; cores:"; ls -la "$RES/cores" 2>&1
    for c in "$RES"/cores/core.*; do [ -e "$c" ] && echo "core $c: $(file -b "$c" 2>/dev/null)"; done
    for i in 1 2 3 4 5; do xl list >/dev/null 2>&1; echo "diag xl list #$i rc=$?"; done
    for i in 1 2 3; do xenstore-ls -fp "/libxl/$GDOMID" >/dev/null 2>&1; echo "diag xenstore-ls #$i rc=$?"; done
    dmesg | tail -20
    cat /var/lib/xen/userdata-d."$GDOMID".*libxl-json 2>&1 | tr -d '\n ' | head -c 4000; echo
}

port1_is() { [ "$(xenstore-read "/local/domain/0/backend/vusb/$GDOMID/$CTRL/port/1" 2>/dev/null)" = "$1" ]; }
# The stick's device number on bus 1 (2 at boot; a replug in 6/host-unplug gives it another).
USB_SYS=${USB_SYS:-/sys/bus/usb/devices}
stick_present() { [ -e "$USB_SYS/1-1/devnum" ]; }
stick_absent() { ! stick_present; }
stick_addr() { local a=2; read -r a <"$USB_SYS/1-1/devnum" 2>/dev/null; echo "$a"; }
s_dev_attach() {
    local rc=0 addr; addr=$(stick_addr)
    timeout 60 "$BIN/xl-usb" usbdev-attach "$GUEST" hostbus=1 hostaddr="$addr" || rc=$?
    [ "$rc" -eq 0 ] || { DETAIL="xl-usb usbdev-attach hostaddr=$addr rc=$rc"; return 1; }
    port1_is 1-1 || { DETAIL="backend/vusb/$GDOMID/$CTRL/port/1 is not 1-1"; return 1; }
    DETAIL="port 1 of controller $CTRL = 1-1 (bus 1 device $addr)"
}

# s_iso_out: QEMU's usb-audio (full speed, on its xhci: bus 2) on port 2 of our controller; the
# guest plays 3 s on it with snd-usb-audio: isochronous OUT URBs through vhci_hcd,
# pvusb-frontend, the ring, pvusb-backend and real usbfs. Then it goes back to dom0.
AUDIO=2-1
s_iso_out() {
    local rc=0
    [ -e "$USB_SYS/$AUDIO/idVendor" ] || { DETAIL="no usb-audio at $AUDIO in dom0"; return 1; }
    timeout 60 "$BIN/xl-usb" usbdev-attach "$GUEST" busid="$AUDIO" controller="$CTRL" port=2 || rc=$?
    [ "$rc" -eq 0 ] || { DETAIL="xl-usb usbdev-attach busid=$AUDIO rc=$rc"; return 1; }
    guest_cmd 120 pcm-play 3; rc=$?
    DETAIL="$AUDIO ($(cat "$USB_SYS/$AUDIO/product" 2>/dev/null)) on port 2; guest: $GOUT"
    timeout 60 "$BIN/xl-usb" usbdev-detach "$GUEST" "$CTRL" 2 || { DETAIL="$DETAIL; usbdev-detach failed"; return 1; }
    return "$rc"
}

# s_xhci_io: the second stick, on QEMU's xHCI, on port 3 of our controller (it comes up
# SuperSpeed, so on the xHCI's USB 3 bus: found by its serial). usbfs
# withholds BULK_CONTINUATION there (xHCI does not stop an endpoint at a short packet), so
# pvusb-backend holds each piece of a split chain (usb-storage's 120 KiB reads are two) until
# the one before it is back. The guest writes the stick and reads it back; the backend must
# have negotiated split chains and seen the bus for what it is.
xstick_busid() {
    local d
    for d in "$USB_SYS"/*; do
        [ "$(cat "$d/serial" 2>/dev/null)" = PVUSB0002 ] && { echo "${d##*/}"; return 0; }
    done
    return 1
}
s_xhci_io() {
    local rc=0 out chains=no xhci=no held XSTICK
    XSTICK=$(xstick_busid) || { DETAIL="no USB device with serial PVUSB0002 in dom0"; return 1; }
    timeout 60 "$BIN/xl-usb" usbdev-attach "$GUEST" busid="$XSTICK" controller="$CTRL" port=3 || rc=$?
    [ "$rc" -eq 0 ] || { DETAIL="xl-usb usbdev-attach busid=$XSTICK rc=$rc"; return 1; }
    guest_cmd 10 use-stick PVUSB0002
    if guest_cmd 200 wait-disk 150; then guest_cmd 600 io-test "$IO_MB"; rc=$?; else rc=1; fi
    out=$GOUT
    guest_cmd 10 use-stick
    grep -q 'split_chain=true' "$RES/pvusb-backend.log" && chains=yes
    grep 'does not stop an endpoint at a short packet' "$RES/pvusb-backend.log" | grep -q "$XSTICK" && xhci=yes
    DETAIL="$XSTICK ($(cat "$USB_SYS/$XSTICK/product" 2>/dev/null), $(cat "$USB_SYS/$XSTICK/speed" 2>/dev/null) Mb/s) on port 3; split chains: $chains; backend saw the xHCI bus: $xhci; guest: $out"
    timeout 60 "$BIN/xl-usb" usbdev-detach "$GUEST" "$CTRL" 3 || { DETAIL="$DETAIL; usbdev-detach failed"; return 1; }
    # The backend counts the requests it held back on the port: the hold must have engaged.
    nap 1
    held=$(grep "device detached" "$RES/pvusb-backend.log" | grep "$XSTICK" | tail -1 | sed -n 's/.*held=\([0-9]*\).*/\1/p')
    DETAIL="$DETAIL; requests held back: ${held:-?}"
    [ "$rc" -eq 0 ] && [ "$chains" = yes ] && [ "$xhci" = yes ] && [ "${held:-0}" -gt 0 ]
}

# host_cmd COMMAND: run.sh's host agent does COMMAND with QEMU's monitor (usb-unplug,
# usb-replug). The request is a line on the console only: step logs are echoed to the
# console after each step, so the marker must never be in one.
HSEQ=0
host_cmd() { HSEQ=$((HSEQ + 1)); echo "E2E-HOST $HSEQ $1" >/dev/console; }

# s_host_unplug: the stick is pulled out of dom0's USB bus (QEMU device_del) while the guest
# reads it (through our frontend, or Linux's xen-hcd), then plugged back (device_add). The guest must see the
# disconnect and its reader end, the assignment must stay, and after the replug the backend
# claims the device again (netlink uevent, usbfs) and the guest reads the data back.
s_host_unplug() {
    local rc=0 gone
    guest_cmd 30 hold-open || { DETAIL="hold-open: $GOUT"; return 1; }
    nap 2
    host_cmd usb-unplug
    wait_for 60 stick_absent || { DETAIL="the stick is still in dom0 60 s after the unplug request"; return 1; }
    guest_cmd 90 check-gone 45; rc=$?; gone=$GOUT
    [ "$rc" -eq 0 ] || { DETAIL="unplugged in dom0; guest: $gone"; return 1; }
    port1_is 1-1 || { DETAIL="port/1 lost its assignment: '$(xenstore-read "/local/domain/0/backend/vusb/$GDOMID/$CTRL/port/1" 2>/dev/null)'"; return 1; }
    host_cmd usb-replug
    wait_for 60 stick_present || { DETAIL="the stick is not back in dom0 60 s after the replug request"; return 1; }
    guest_cmd 200 verify 150; rc=$?
    DETAIL="unplugged mid-read, guest: $gone; replugged as bus 1 device $(stick_addr), guest: $GOUT"
    return "$rc"
}

s_usb_list() {
    local rc1=0 rc2=0 tag=$1
    timeout 30 "$BIN/xl-usb" usb-list "$GUEST" >"$RES/xl-usb-usb-list-$tag.txt" 2>&1 || rc1=$?
    timeout 30 xl usb-list "$GUEST" >"$RES/xl-usb-list-$tag.txt" 2>&1 || rc2=$?
    cat "$RES/xl-usb-usb-list-$tag.txt" "$RES/xl-usb-list-$tag.txt"
    local addr; addr=$(stick_addr)
    local shows=no; grep -Eq "1-1|Bus 0*1 Device 0*$addr|hostbus=1" "$RES/xl-usb-usb-list-$tag.txt" && shows=yes
    local xlshows=no; grep -Eq "Bus 0*1 Device 0*$addr" "$RES/xl-usb-list-$tag.txt" && xlshows=yes
    DETAIL="xl-usb usb-list rc=$rc1 shows 1-1: $shows; xl usb-list rc=$rc2 shows it: $xlshows"
    [ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ] && [ "$shows" = yes ]
}

GUEST_READ_OURS="" GUEST_READ_STOCK="" GUEST_READ_QUSB=""
# s_guest_io TAG: the guest finds the stick as a SCSI disk, writes IO_MB of random data,
# drops caches, reads it back; sha256 must match.
s_guest_io() {
    local rc
    guest_cmd 200 wait-disk 150 || { DETAIL="$GOUT"; return 1; }
    guest_cmd 600 io-test "$IO_MB"; rc=$?
    DETAIL="$GOUT"
    [ "$rc" -eq 0 ] || return 1
    case "$1" in
        ours) GUEST_READ_OURS=$(kv read_mbps "$GOUT") ;;
        stock) GUEST_READ_STOCK=$(kv read_mbps "$GOUT") ;;
        qusb) GUEST_READ_QUSB=$(kv read_mbps "$GOUT") ;;
    esac
}

s_detach_while_open() {
    guest_cmd 30 hold-open || { DETAIL="hold-open: $GOUT"; return 1; }
    nap 2
    local rc=0
    timeout 60 "$BIN/xl-usb" usbdev-detach "$GUEST" "$CTRL" 1 || rc=$?
    [ "$rc" -eq 0 ] || { DETAIL="xl-usb usbdev-detach rc=$rc"; return 1; }
    guest_cmd 90 check-gone 45; rc=$?
    DETAIL="detach rc=0; port/1='$(xenstore-read "/local/domain/0/backend/vusb/$GDOMID/$CTRL/port/1" 2>/dev/null)'; guest: $GOUT"
    [ "$rc" -eq 0 ] && port1_is ""
}

s_reattach() {
    s_dev_attach || return 1
    guest_cmd 200 verify 150; local rc=$?
    DETAIL="re-attached; guest: $GOUT"; return "$rc"
}

# s_backend_restart [FRONTEND]: pvusb-backend is SIGKILLed and restarted under the guest's
# frontend (FRONTEND names it in the log; pvusb-frontend by default); the guest reads the data
# again without being touched.
# The guest reads the stick through an open descriptor while the backend is killed: the new
# process takes the rings over and keeps the device as the guest knows it, so the reader goes
# on (its in-flight commands fail once and usb-storage retries them) and the data verifies.
#
# QEMU's USB keyboard sits on port 4 meanwhile, its input device open in the guest: usbhid keeps
# an interrupt read in flight on it while the stick's reads complete behind it, so the dead
# process had answered out of ring order. The new one must answer that read (from its journal)
# for the guest's next key to arrive; from the ring's positions alone it would never be answered.
s_backend_restart() {
    local who=${1:-pvusb-frontend} held kbd rc=0 KBD taken
    KBD=$(kbd_busid) || { DETAIL="no QEMU USB Keyboard in dom0"; return 1; }
    timeout 60 "$BIN/xl-usb" usbdev-attach "$GUEST" busid="$KBD" controller="$CTRL" port=4 || rc=$?
    [ "$rc" -eq 0 ] || { DETAIL="xl-usb usbdev-attach busid=$KBD rc=$rc"; return 1; }
    guest_cmd 120 kbd-open 90 || { DETAIL="keyboard $KBD on port 4; guest: $GOUT"; return 1; }
    kbd_typed 60 || { DETAIL="keyboard before the restart: $GOUT"; return 1; }
    guest_cmd 30 hold-open || { DETAIL="hold-open: $GOUT"; return 1; }
    nap 2
    BACKEND_UP=0; kill -KILL "$BACKEND_PID" 2>/dev/null; wait "$BACKEND_PID" 2>/dev/null
    echo "---- pvusb-backend killed (SIGKILL), restarting" >>"$RES/pvusb-backend.log"
    nap 1
    backend_start || return 1
    guest_cmd 150 still-held 120 || { DETAIL="backend SIGKILLed and restarted; guest ($who): $GOUT"; return 1; }
    held=$GOUT
    taken=$(grep 'rings taken over' "$RES/pvusb-backend.log" | tail -1 | sed 's/.*INFO //')
    kbd_typed 90 || { DETAIL="backend SIGKILLed and restarted ($taken); guest ($who): $held; keyboard: $GOUT (its read in flight never answered?)"; return 1; }
    kbd=$GOUT
    guest_cmd 30 kbd-close
    timeout 60 "$BIN/xl-usb" usbdev-detach "$GUEST" "$CTRL" 4 || { DETAIL="xl-usb usbdev-detach port 4 failed"; return 1; }
    guest_cmd 200 verify 150; rc=$?
    DETAIL="backend SIGKILLed and restarted ($taken); guest ($who): $held; keyboard after: $kbd; $GOUT"; return "$rc"
}

# kbd_busid: QEMU's USB keyboard in dom0.
kbd_busid() {
    local d
    for d in "$USB_SYS"/*; do
        [ "$(cat "$d/product" 2>/dev/null)" = "QEMU USB Keyboard" ] && { echo "${d##*/}"; return 0; }
    done
    return 1
}

# kbd_typed SECONDS: a key typed on QEMU's keyboard (host agent, monitor sendkey) reaches the
# guest's reader.
kbd_typed() {
    guest_cmd 30 kbd-mark || return 1
    host_cmd kbd-type
    guest_cmd $(($1 + 30)) kbd-got "$1"
}

# remove_ctrl: the current controller goes, with xl-usb (usbctrl-detach removes what is plugged
# in too; an explicit usbdev-detach only when port 1 is in use: xl-usb refuses an empty port).
remove_ctrl() {
    local rc=0
    WHAT="no controller to remove"
    [ -n "$CTRL" ] || return 0
    port1_is "" || timeout 60 "$BIN/xl-usb" usbdev-detach "$GUEST" "$CTRL" 1 || rc=$?
    timeout 60 "$BIN/xl-usb" usbctrl-detach "$GUEST" "$CTRL" || rc=$?
    [ "$rc" -eq 0 ] || { DETAIL="xl-usb usbdev-detach/usbctrl-detach rc=$rc"; return 1; }
    WHAT="controller $CTRL removed"; CTRL=""
}

# s_switch_to stock|ours: the guest's frontend becomes Linux's xen-hcd or ours.
s_switch_to() {
    remove_ctrl || return 1
    if [ "$1" = stock ]; then
        guest_cmd 30 stop-frontend || { DETAIL="stop-frontend: $GOUT"; return 1; }
        guest_cmd 60 load-stock || { DETAIL="load xen-hcd: $GOUT"; return 1; }
    else
        guest_cmd 30 unload-stock || { DETAIL="unload xen-hcd: $GOUT"; return 1; }
        guest_cmd 30 start-frontend || { DETAIL="start-frontend: $GOUT"; return 1; }
    fi
    DETAIL="$WHAT; guest: $GOUT"
}

s_backend_stop() {
    [ "$BACKEND_UP" = 1 ] || { DETAIL="pvusb-backend was not running (last status ${BACKEND_STATUS:-?})"; return 1; }
    BACKEND_UP=0
    kill -TERM "$BACKEND_PID" 2>/dev/null
    local i=0
    while kill -0 "$BACKEND_PID" 2>/dev/null; do i=$((i + 1)); [ "$i" -gt 50 ] && break; nap 0.2; done
    if kill -0 "$BACKEND_PID" 2>/dev/null; then kill -KILL "$BACKEND_PID"; DETAIL="did not exit within 10s of SIGTERM"; return 1; fi
    wait "$BACKEND_PID"; local st=$?
    DETAIL="exited with status $st after SIGTERM"; [ "$st" -eq 0 ]
}

# ---------------------------------------------------------------- the run
# guarded ID PREREQ_VAR BINARIES... -- FUNCTION [ARGS]
# A "soft" step (guarded --soft ...) fails alone: later steps still run.
guarded() {
    local soft=0; [ "$1" = --soft ] && { soft=1; shift; }
    local id=$1 pre=$2 bins=() m; shift 2
    while [ "$1" != -- ]; do bins+=("$1"); shift; done; shift
    if missing "${bins[@]}"; then skip "$id" "$MISSING"; return 1; fi
    if [ "${!pre}" != 1 ]; then skip "$id" "after failed ${FAILED_AT:-an earlier step}"; return 1; fi
    local ok=0
    step "$id" "$@" && ok=1
    # A backend that dies in a step is a failure of its own, whatever the step concluded.
    if [ -n "$BACKEND_PID" ] && [ "$BACKEND_UP" = 1 ] && ! kill -0 "$BACKEND_PID" 2>/dev/null; then
        wait "$BACKEND_PID" 2>/dev/null; BACKEND_STATUS=$?; BACKEND_UP=0
        record "$id/backend-died" FAIL "pvusb-backend exited with status $BACKEND_STATUS during $id (see pvusb-backend.log, dom0-dmesg.log)"
    fi
    [ "$ok" = 1 ] && return 0
    FAILED_AT=$id; [ "$soft" = 1 ] || eval "$pre=0"; return 1
}

smoke() {
    now; since_qemu; DOM0_UP=$UP; DOM0_SINCE_QEMU=$SQ
    say "scenario start; dom0 uptime $DOM0_UP, ${DOM0_SINCE_QEMU}s after QEMU start; require pvusb: $REQUIRE_PVUSB"
    OK_XEN=0 OK_STICK=0 OK_GUEST=0
    step dom0/boot s_dom0_boot
    step dom0/xen-start s_xen_start && OK_XEN=1
    if [ "$OK_XEN" = 1 ]; then step dom0/xl-info s_xl_info; else skip dom0/xl-info "after failed dom0/xen-start"; fi
    step dom0/usb-stick s_usb_stick && OK_STICK=1
    if [ "$OK_STICK" = 1 ]; then step "7/native-read" s_native_read; else skip 7/native-read "after failed dom0/usb-stick"; fi
    if [ "$OK_XEN" = 1 ]; then step guest/create s_guest_create && OK_GUEST=1; else skip guest/create "after failed dom0/xen-start"; fi
    if [ "$OK_GUEST" = 1 ]; then
        step guest/kernel-drivers s_guest_drivers
        step guest/xenstore-channel s_xenstore_channel
    else
        skip guest/kernel-drivers "after failed guest/create"; skip guest/xenstore-channel "after failed guest/create"
    fi

    # The canary needs only a guest agent that answers (even if xl create itself failed).
    if [ -x "$BIN/fpu-canary" ] && [ -n "$GDATA" ] && guest_ready; then step dom0/fpu-canary s_fpu_canary
    else skip dom0/fpu-canary "no guest agent"; fi

    # Without a backend, stock libxl's usbctrl-attach waits for one and gives up.
    if [ "$OK_GUEST" = 1 ]; then step xl/usbctrl-attach-no-backend s_xl_attach_waits
    else skip xl/usbctrl-attach-no-backend "after failed guest/create"; fi

}

# ---- issue 9 steps with pvusb. Each needs its binaries and the steps before it.
# Round "ours": pvusb-frontend + vhci_hcd in the guest, controller made by xl-usb.
round_ours() {
    local first=$1
    if [ "$first" = 1 ]; then guarded 2/frontend-start OURS "${ALL[@]}" -- s_frontend_start
    else guarded 2/switch-to-ours OURS "${ALL[@]}" -- s_switch_to ours; fi
    guarded 3/usbctrl-attach-xl-usb OURS "${ALL[@]}" -- s_ctrl_attach xl-usb
    guarded --soft 3/second-controller OURS "${ALL[@]}" -- s_second_ctrl
    guarded 3/usbdev-attach OURS "${ALL[@]}" -- s_dev_attach
    guarded --soft 3/usb-list OURS "${ALL[@]}" -- s_usb_list ours
    guarded 4/io-ours-vhci OURS "${ALL[@]}" -- s_guest_io ours
    guarded --soft 4/iso-out-ours OURS "${ALL[@]}" -- s_iso_out
    guarded --soft 4/io-ours-xhci OURS "${ALL[@]}" -- s_xhci_io
    guarded 6/detach-while-open OURS "${ALL[@]}" -- s_detach_while_open
    guarded 6/reattach OURS "${ALL[@]}" -- s_reattach
    guarded 6/backend-restart OURS "${ALL[@]}" -- s_backend_restart
    guarded 6/host-unplug OURS "${ALL[@]}" -- s_host_unplug
}

# Round "stock": Linux's own xen-hcd against our backend, controller made by stock xl.
round_stock() {
    local first=$1
    if [ "$first" = 1 ]; then guarded 5/load-stock STOCK "${BE[@]}" -- s_load_stock
    else guarded 5/switch-to-stock STOCK "${BE[@]}" -- s_switch_to stock; fi
    guarded 3/usbctrl-attach-stock-xl STOCK "${BE[@]}" -- s_ctrl_attach xl
    guarded 5/usbdev-attach-stock STOCK "${BE[@]}" -- s_dev_attach
    guarded --soft 5/usb-list-stock STOCK "${BE[@]}" -- s_usb_list stock
    guarded 5/io-stock-xen-hcd STOCK "${BE[@]}" -- s_guest_io stock
    guarded 5/backend-restart-stock STOCK "${BE[@]}" -- s_backend_restart xen-hcd
    guarded 5/host-unplug-stock STOCK "${BE[@]}" -- s_host_unplug
}
s_load_stock() {
    guest_cmd 60 load-stock; local rc=$?
    DETAIL="$GOUT"; return "$rc"
}

# ---- issue 9 steps with pvusb. Each needs its binaries and the steps before it; the two
# rounds do not depend on each other, only on a running backend.
pvusb_rounds() {
    OK=$((OK_GUEST && OK_STICK))
    OURS=$OK
    guarded 1/backend-start OK pvusb-backend -- backend_start || OURS=0
    BACKEND_OK=$OURS
    STOCK=$OURS
    ALL=(pvusb-backend pvusb-frontend xl-usb)
    BE=(pvusb-backend xl-usb)
    say "round order: ${ROUND_ORDER:=stock-first}"
    if [ "$ROUND_ORDER" = stock-first ]; then
        round_stock 1
        backend_alive || OURS=0
        round_ours 0
    else
        round_ours 1
        backend_alive || STOCK=0
        round_stock 0
    fi
    if [ "$BACKEND_OK" = 1 ] && [ -n "$BACKEND_PID" ]; then
        if [ "$BACKEND_UP" = 1 ] && ! kill -0 "$BACKEND_PID" 2>/dev/null; then
            wait "$BACKEND_PID" 2>/dev/null; BACKEND_STATUS=$?; BACKEND_UP=0
            record 1/backend-died FAIL "pvusb-backend exited with status $BACKEND_STATUS during the second round"
        fi
        [ -x "$BIN/xl-usb" ] && remove_ctrl
        step 1/backend-stop s_backend_stop
    fi
}

# backend_alive: before the second round, a backend that died in the first is restarted
# (its death is already a recorded failure).
backend_alive() {
    [ "$BACKEND_OK" = 1 ] || return 1
    kill -0 "$BACKEND_PID" 2>/dev/null && return 0
    say "pvusb-backend is not running before the second round; restarting it"
    backend_start
}

# ---- step 7: native vs guest read rate, then clean up
# guest_off: the current guest ($GUEST) saves its xenstore data and console tail, powers off
# and is destroyed.
guest_off() {
    [ -n "$GDATA" ] || return 0
    xenstore-ls -fp "/local/domain/$GDOMID/data" >"$RES/guest-data-xenstore-$GUEST.txt" 2>&1
    guest_cmd 20 dmesg >/dev/null 2>&1
    guest_cmd 10 poweroff >/dev/null 2>&1
    nap 2
    timeout 20 xl destroy "$GUEST" 2>/dev/null
    GDATA=""
}

# ---- Round "qusb": pvusb-frontend against QEMU's usbif backend (hw/usb/xen-usb.c in Debian's
# qemu-system-xen), the stock backend DESIGN.md names for frontend compatibility. The first
# guest goes; a second one is created with a qusb controller, so that libxl starts its device
# model, and stock xl plugs the stick in (QMP usb-host, no usbback needed for qusb).
round_qusb() {
    QUSB=$((OK_GUEST && OK_STICK))
    guest_off
    guarded 8/qusb-guest-create QUSB pvusb-frontend -- s_qusb_create
    guarded 8/qusb-frontend-start QUSB pvusb-frontend -- s_frontend_start
    guarded 8/qusb-usbdev-attach QUSB pvusb-frontend -- s_qusb_attach
    guarded 8/io-ours-qusb QUSB pvusb-frontend -- s_guest_io qusb
}
s_qusb_create() {
    local cfg=/tmp/domq.cfg rc=0 dm
    sed 's/^name = .*/name = "domq"/' "$E2E/guest/domu.cfg" >"$cfg"
    echo 'usbctrl = [ "type=qusb,version=2,ports=4" ]' >>"$cfg"
    GUEST=domq GDOMID="" GDATA="" GSEQ=0
    s_guest_create "$cfg" || rc=$?
    dm=$(pgrep -f xen-qemu-system-i386 | head -1)
    [ "$rc" -eq 0 ] || return "$rc"
    [ -n "$dm" ] || { DETAIL="$DETAIL; no device model (xen-qemu-system-i386) running"; return 1; }
    DETAIL="$DETAIL; device model pid $dm; backend $(xenstore-read "/local/domain/$GDOMID/device/vusb/0/backend" 2>/dev/null)"
    return 0
}
s_qusb_attach() {
    local rc=0 addr; addr=$(stick_addr)
    timeout 120 xl usbdev-attach "$GUEST" hostbus=1 hostaddr="$addr" || rc=$?
    xl usb-list "$GUEST"
    [ "$rc" -eq 0 ] || { DETAIL="xl usbdev-attach (qusb) hostaddr=$addr rc=$rc"; return 1; }
    DETAIL="stock xl: bus 1 device $addr on the qusb controller"
}

finish() {
    if [ -n "$NATIVE_READ" ]; then
        for which in ours stock qusb; do
            v=GUEST_READ_${which^^}
            if [ -n "${!v}" ]; then
                info "7/read-ratio-$which" "guest ${!v} MB/s vs dom0 native $NATIVE_READ MB/s = $(awk -v g="${!v}" -v n="$NATIVE_READ" 'BEGIN { printf "%.0f%%", 100 * g / n }')"
            fi
        done
    fi

    guest_off
    xenstore-ls -fp >"$RES/xenstore-final.txt" 2>&1
    now; since_qemu
    record dom0/finished PASS "scenario complete at dom0 uptime ${UP}s, ${SQ}s after QEMU start"
}

# The dry-run check of this script's control flow sources it with E2E_SOURCE_ONLY=1.
[ "${E2E_SOURCE_ONLY:-0}" = 1 ] && return 0
smoke
pvusb_rounds
round_qusb
finish
