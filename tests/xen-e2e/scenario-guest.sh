#!/bin/busybox sh
# The guest side of the real-Xen end-to-end scenario: /init of the busybox-only PV guest.
# Loads the USB stack, announces itself in xenstore (data/e2e/ready, measurements under
# data/e2e/m/), then serves commands dom0 writes to data/e2e/cmd ("<seq> <command> [args]"):
# it answers data/e2e/out (one line) and then data/e2e/ack ("<seq> <status>").
# Paths are relative, so xenstored resolves them under this domain's /local/domain/<id>.
# Every command bounds its own waits, so the agent always answers.
# With "e2e.local" on the kernel command line (run.sh --selftest-agent: plain QEMU, no Xen,
# the stick on the VM's own EHCI) it runs /etc/e2e-local.cmds instead and prints each answer
# as "E2E-RESULT <seq> <status> <command> :: <answer>" on the console.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /run && mount -t devpts devpts /dev/pts
D=data/e2e
VERIFY_MB=4
LOCAL=0; grep -q 'e2e\.local' /proc/cmdline && LOCAL=1
[ -f /etc/e2e.env ] && . /etc/e2e.env

log() { echo "guest-agent: $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
# Deadlines by the clock, not by counting polls: under TCG one poll can take seconds.
# deadline SECONDS: DL = uptime (whole seconds) + SECONDS; expired: the deadline has passed.
deadline() { local u; read -r u _ </proc/uptime; DL=$((${u%.*} + $1)); }
expired() { local u; read -r u _ </proc/uptime; [ "${u%.*}" -ge "$DL" ]; }
mbps() { awk -v mb="$1" -v a="$2" -v b="$3" 'BEGIN { t = b - a; if (t <= 0) t = 0.01; printf "%.2f", mb / t }'; }
xs_write() { if [ "$LOCAL" = 1 ]; then echo "E2E-XS $1 = $2"; else xenstore-write "$1" "$2"; fi; }
put() { xs_write "$D/m/$1" "$2"; }

# loadmod NAME: insmod the module and its dependencies in the order computed at build time.
loadmod() {
    local f n
    [ -f "/lib/modules/order/$1" ] || { echo "no module list for $1"; return 1; }
    for f in $(cat "/lib/modules/order/$1"); do
        n=$(basename "$f" .ko | tr - _)
        grep -q "^$n " /proc/modules && continue
        insmod "$f" || { echo "insmod $f failed"; return 1; }
    done
}

# The stick as seen by this guest: the first SCSI disk whose vendor is QEMU and, when
# $STICK_SERIAL is set (command use-stick), whose USB device has that serial.
STICK_SERIAL=""
find_disk() {
    local d u
    for d in /sys/block/sd*; do
        [ -e "$d/device/vendor" ] || continue
        grep -q QEMU "$d/device/vendor" || continue
        [ "$(cat "$d/size")" -gt 0 ] || continue
        if [ -n "$STICK_SERIAL" ]; then
            u=$(readlink -f "$d/device")
            while [ "$u" != / ] && [ ! -e "$u/idVendor" ]; do u=${u%/*}; done
            [ "$(cat "$u/serial" 2>/dev/null)" = "$STICK_SERIAL" ] || continue
        fi
        echo "${d##*/}"; return 0
    done
    return 1
}

# wait_disk SECONDS
wait_disk() {
    deadline "$1"
    until expired; do
        DISK=$(find_disk) && [ -b "/dev/$DISK" ] && return 0
        sleep 0.5
    done
    return 1
}

# io_test MB: random data -> disk (O_DIRECT + fsync), drop caches, read back (O_DIRECT), compare.
io_test() {
    local mb=$1 t0 t1 t2 t3 w r sw sr pat=/tmp/pattern${STICK_SERIAL:+-$STICK_SERIAL}
    find_disk >/dev/null || { OUT="no disk"; return 1; }
    DISK=$(find_disk)
    dd if=/dev/urandom of="$pat" bs=1M count="$mb" 2>/dev/null
    sw=$(sha256sum <"$pat" | cut -d' ' -f1)
    # verify re-reads only a prefix: enough to prove the data survived, cheap under TCG
    local vmb=$VERIFY_MB; [ "$mb" -lt "$vmb" ] && vmb=$mb
    echo "$vmb" >"$pat.mb"
    head -c $((vmb * 1048576)) "$pat" | sha256sum | cut -d' ' -f1 >"$pat.sha"
    t0=$(up)
    dd if="$pat" of="/dev/$DISK" bs=1M oflag=direct conv=fsync 2>/dev/null || { OUT="write to /dev/$DISK failed"; return 1; }
    t1=$(up)
    sync; echo 3 >/proc/sys/vm/drop_caches
    t2=$(up)
    dd if="/dev/$DISK" of=/tmp/readback bs=1M count="$mb" iflag=direct 2>/dev/null || { OUT="read of /dev/$DISK failed"; return 1; }
    t3=$(up)
    sr=$(sha256sum </tmp/readback | cut -d' ' -f1); rm -f /tmp/readback
    w=$(mbps "$mb" "$t0" "$t1"); r=$(mbps "$mb" "$t2" "$t3")
    put "${2:-io}_write_mbps" "$w"; put "${2:-io}_read_mbps" "$r"
    OUT="dev=$DISK mb=$mb write_mbps=$w read_mbps=$r sha256=${sw%"${sw#????????????}"}"
    if [ "$sw" = "$sr" ]; then OUT="$OUT match=yes"; else OUT="$OUT match=NO(read ${sr%"${sr#????????????}"})"; return 1; fi
}

# verify SECONDS: until the deadline, wait for the disk and read back (a VERIFY_MB prefix of)
# what io_test wrote.
verify() {
    local i=0 mb sr t0 t1 pat=/tmp/pattern${STICK_SERIAL:+-$STICK_SERIAL}
    [ -f "$pat.sha" ] || { OUT="nothing written before"; return 1; }
    mb=$(cat "$pat.mb")
    deadline "$1"
    until expired; do
        if DISK=$(find_disk) && [ -b "/dev/$DISK" ]; then
            t0=$(up)
            sr=$(dd if="/dev/$DISK" bs=1M count="$mb" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
            t1=$(up)
            if [ "$sr" = "$(cat "$pat.sha")" ]; then
                OUT="dev=$DISK data intact (after $i polls) read_mbps=$(mbps "$mb" "$t0" "$t1")"; return 0
            fi
        fi
        i=$((i + 1)); sleep 0.5
    done
    OUT="disk ${DISK:-absent}: data not readable/intact within $1 s"; return 1
}

# hold-open: keep the disk open and busy (a reader loop on an open descriptor, counting its
# passes in /tmp/reader.count).
hold_open() {
    DISK=$(find_disk) || { OUT="no disk"; return 1; }
    echo 0 >/tmp/reader.count; rm -f /tmp/reader.stop
    ( exec 3<"/dev/$DISK"
      n=0
      while [ ! -e /tmp/reader.stop ] && dd if="/dev/$DISK" of=/dev/null bs=64k count=64 iflag=direct 2>/dev/null; do
          n=$((n + 1)); echo "$n" >/tmp/reader.count
      done
      echo "guest-agent: reader loop on /dev/$DISK ended" ) &
    echo $! >/tmp/reader.pid
    HELD=$DISK
    OUT="reader pid $! holds /dev/$DISK open"
}

# still-held SECONDS: the held disk must still be there and its reader still reading (more
# passes within SECONDS): the device was not enumerated anew. Stops the reader.
still_held() {
    local pid c0 c1
    pid=$(cat /tmp/reader.pid 2>/dev/null)
    c0=$(cat /tmp/reader.count 2>/dev/null || echo 0); c1=$c0
    deadline "$1"
    while ! expired && [ -e "/sys/block/$HELD" ] && kill -0 "$pid" 2>/dev/null; do
        c1=$(cat /tmp/reader.count 2>/dev/null || echo 0)
        [ "$c1" -gt $((c0 + 1)) ] && break
        sleep 0.5
    done
    if [ ! -e "/sys/block/$HELD" ]; then OUT="/dev/$HELD is gone: the device was enumerated anew"
    elif ! kill -0 "$pid" 2>/dev/null; then OUT="the reader on /dev/$HELD ended (passes $c0 -> $c1)"
    elif [ "$c1" -le $((c0 + 1)) ]; then OUT="/dev/$HELD kept but the reader is stuck (passes $c0 -> $c1 in $1 s)"
    else
        stop_reader "$pid"; OUT="/dev/$HELD kept, its reader went on (passes $c0 -> $c1)"; return 0
    fi
    stop_reader "$pid"; return 1
}

# stop_reader PID: asks hold-open's reader to stop after its current pass and waits for it.
stop_reader() {
    touch /tmp/reader.stop; deadline 60
    while kill -0 "$1" 2>/dev/null && ! expired; do sleep 0.2; done
    kill -KILL "$1" 2>/dev/null
}

# check-gone SECONDS: the held disk must disappear and its reader must end (or be killable).
check_gone() {
    local pid st t0 t1 gone
    pid=$(cat /tmp/reader.pid 2>/dev/null)
    t0=$(up); deadline "$1"
    while [ -e "/sys/block/$HELD" ] && ! expired; do sleep 0.2; done
    [ -e "/sys/block/$HELD" ] && { OUT="/dev/$HELD still present after $1 s"; return 1; }
    t1=$(up); gone=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    deadline 10
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && ! expired; do sleep 0.2; done
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        pkill -KILL -P "$pid"; kill -KILL "$pid"; sleep 2
        st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)
        [ -n "$st" ] && [ "$st" != Z ] && { OUT="$HELD gone after ${gone}s but reader stuck (state $st)"; return 1; }
        OUT="$HELD gone after ${gone}s; reader had to be killed"
    else
        OUT="$HELD gone after ${gone}s; reader ended by itself"
    fi
    timeout 20 sync || { OUT="$OUT; sync hangs"; return 1; }
}

# kbd-open SECONDS: loads usbhid and evdev, waits for the USB keyboard's input device and
# keeps it open (a reader copies its events to /tmp/kbd.events): from then on usbhid keeps an
# interrupt read in flight on the keyboard, waiting for a key.
kbd_open() {
    local e m
    for m in usbhid hid_generic evdev; do loadmod "$m" || { OUT="cannot load $m"; return 1; }; done
    KBD_EV=""; deadline "$1"
    until [ -n "$KBD_EV" ] || expired; do
        for e in /sys/class/input/event*; do
            case "$(cat "$e/device/name" 2>/dev/null)" in *"USB Keyboard"*) KBD_EV=${e##*/}; break ;; esac
        done
        [ -n "$KBD_EV" ] && [ -c "/dev/input/$KBD_EV" ] || { KBD_EV=""; sleep 0.5; }
    done
    [ -n "$KBD_EV" ] || { OUT="no USB keyboard input device within $1 s"; return 1; }
    : >/tmp/kbd.events; KBD_MARK=0
    cat "/dev/input/$KBD_EV" >/tmp/kbd.events &
    echo $! >/tmp/kbd.pid
    OUT="/dev/input/$KBD_EV ($(cat "/sys/class/input/$KBD_EV/device/name")) open, reader pid $!"
}

# kbd-got SECONDS: key events must arrive past the size kbd-mark noted (a key typed meanwhile).
kbd_got() {
    local n=0
    deadline "$1"
    until expired; do
        n=$(wc -c </tmp/kbd.events)
        [ "$n" -gt "$KBD_MARK" ] && { OUT="key events arrived ($KBD_MARK -> $n bytes)"; return 0; }
        sleep 0.5
    done
    OUT="no key event within $1 s ($KBD_MARK bytes before)"; return 1
}

stop_frontend() {
    local p; p=$(pidof pvusb-frontend) || { OUT="frontend not running"; return 0; }
    kill -TERM $p; deadline 10
    while pidof pvusb-frontend >/dev/null && ! expired; do sleep 0.2; done
    pidof pvusb-frontend >/dev/null && { kill -KILL $p; OUT="frontend needed SIGKILL"; return 1; }
    OUT="frontend stopped"
}

run() { # the command dispatcher; sets OUT, returns status
    OUT=""
    case "$1" in
        probe)
            local vusb=no vhci=no
            loadmod xen_hcd || { OUT="cannot load xen-hcd.ko"; return 1; }
            [ -d /sys/bus/xen/drivers/vusb ] && vusb=yes
            [ -d /sys/devices/platform/vhci_hcd.0 ] && vhci=yes
            rmmod xen_hcd || { OUT="cannot unload xen_hcd"; return 1; }
            put xen_hcd_vusb_driver "$vusb"; put vhci_hcd0 "$vhci"
            OUT="xen-hcd.ko loads: /sys/bus/xen/drivers/vusb=$vusb (unloaded again); vhci_hcd.0=$vhci; kernel $(uname -r)"
            [ "$vusb" = yes ] && [ "$vhci" = yes ] ;;
        start-frontend)
            [ -x /bin/pvusb-frontend ] || { OUT="no /bin/pvusb-frontend"; return 1; }
            # shellcheck disable=SC2086
            ( RUST_LOG=${RUST_LOG:-info} RUST_BACKTRACE=1 /bin/pvusb-frontend ${FRONTEND_ARGS:---platform xen} 2>&1 |
                sed 's/^/pvusb-frontend: /' ) &
            sleep 2
            pidof pvusb-frontend >/dev/null || { OUT="pvusb-frontend exited at once"; return 1; }
            OUT="pvusb-frontend ${FRONTEND_ARGS:---platform xen} running (pid $(pidof pvusb-frontend))" ;;
        stop-frontend) stop_frontend ;;
        load-stock)
            loadmod xen_hcd || { OUT="cannot load xen-hcd.ko"; return 1; }
            OUT="xen-hcd.ko loaded, vusb driver: $([ -d /sys/bus/xen/drivers/vusb ] && echo yes || echo no)" ;;
        fpu-canary) # SECONDS WORKERS
            OUT=$(/bin/fpu-canary "$2" "$3" 2>&1) ;;
        unload-stock)
            grep -q '^xen_hcd ' /proc/modules || { OUT="xen-hcd.ko not loaded"; return 0; }
            rmmod xen_hcd || { OUT="cannot unload xen_hcd"; return 1; }
            OUT="xen-hcd.ko unloaded" ;;
        wait-disk)
            wait_disk "$2" || { OUT="no QEMU disk within $2 s"; return 1; }
            OUT="/dev/$DISK ($(($(cat /sys/block/$DISK/size) / 2048)) MiB, $(cat /sys/block/$DISK/device/vendor | tr -d ' ') $(cat /sys/block/$DISK/device/model | tr -s ' '))" ;;
        io-test) io_test "$2" ;;
        use-stick) # SERIAL (or nothing: any): which QEMU stick the disk commands use
            STICK_SERIAL=${2:-}; OUT="stick serial '${STICK_SERIAL:-any}'" ;;
        verify) verify "$2" ;;
        hold-open) hold_open ;;
        still-held) still_held "$2" ;;
        check-gone) check_gone "$2" ;;
        kbd-open) kbd_open "$2" ;;
        kbd-mark) KBD_MARK=$(wc -c </tmp/kbd.events); OUT="$KBD_MARK bytes of key events so far" ;;
        kbd-got) kbd_got "$2" ;;
        kbd-close) kill "$(cat /tmp/kbd.pid 2>/dev/null)" 2>/dev/null; OUT="keyboard reader stopped" ;;
        usb-unplug|usb-replug) # selftest only: USB-level disconnect/reconnect of the stick
            local a=0 p; [ "$1" = usb-replug ] && a=1
            p=$(grep -l '^46f4$' /sys/bus/usb/devices/*/idVendor | head -1) || { OUT="no stick"; return 1; }
            echo "$a" >"${p%/idVendor}/authorized" || { OUT="cannot write authorized"; return 1; }
            OUT="${p%/idVendor} authorized=$a" ;;
        pcm-play) # SECONDS: a tone on the first sound card (snd-usb-audio on QEMU's usb-audio)
            loadmod snd_usb_audio || { OUT="cannot load snd-usb-audio"; return 1; }
            deadline 60
            until [ -e /dev/snd/pcmC0D0p ] || expired; do sleep 0.5; done
            [ -e /dev/snd/pcmC0D0p ] || { OUT="no /dev/snd/pcmC0D0p within 60 s"; return 1; }
            OUT="$(cat /proc/asound/card0/id 2>/dev/null): $(pcm-play "$2" 2>&1 | tr '\n' ' ')"
            case "$OUT" in *"frames=$(($2 * 48000)) "*) ;; *) return 1 ;; esac ;;
        dmesg) dmesg | tail -60; OUT="dmesg printed on the console" ;;
        poweroff) OUT="bye"; xs_write "$D/out" "$OUT"; xs_write "$D/ack" "$SEQ 0"; sync; poweroff -f ;;
        *) OUT="unknown command $1"; return 2 ;;
    esac
}

log "up at $(up) s, kernel $(uname -r)"
for m in vhci_hcd usb_storage sd_mod xen_gntalloc xen_gntdev xen_evtchn; do loadmod "$m" || log "loading $m failed"; done
put boot_uptime "$(up)"
if [ "$LOCAL" = 1 ]; then
    loadmod ehci_pci || log "loading ehci_pci failed"
    SEQ=0
    while read -r line; do
        SEQ=$((SEQ + 1))
        # shellcheck disable=SC2086
        set -- $line
        log "#$SEQ $*"
        run "$@"; rc=$?
        echo "E2E-RESULT $SEQ $rc $line :: $OUT"
    done </etc/e2e-local.cmds
    poweroff -f
fi
xs_write "$D/ready" "guest userspace at uptime $(up)s" || log "cannot write xenstore (no /dev/xen/xenbus?)"
log "ready"
LAST=""
while :; do
    c=$(xenstore-read "$D/cmd" 2>/dev/null)
    SEQ=${c%% *}
    if [ -n "$c" ] && [ "$SEQ" != "$LAST" ]; then
        LAST=$SEQ
        # shellcheck disable=SC2086
        set -- ${c#* }
        log "#$SEQ $*"
        run "$@"; rc=$?
        log "#$SEQ rc=$rc $OUT"
        xenstore-write "$D/out" "$OUT"
        xenstore-write "$D/ack" "$SEQ $rc"
    fi
    # Block until cmd changes instead of polling (CPU is scarce under TCG). The watch fires
    # once on registration, so -n 2 waits for one real change; the timeout covers a change
    # that lands between the read above and the registration.
    timeout 3 xenstore-watch -n 2 "$D/cmd" >/dev/null 2>&1
done
