#!/usr/bin/env bash
# Checks the control flow of scenario-dom0.sh's pvusb rounds on the host in seconds, without
# Xen: xenstore is a directory tree, `xl` and the pvusb binaries are stubs that only move
# xenstore keys, and the guest agent's answers are scripted. It proves nothing about pvusb;
# it proves that the harness records PASS/FAIL/SKIP as intended (binaries missing, a step
# failing, everything passing) and that no step dies of a shell error.
# Usage: tests/xen-e2e/selftest-flow.sh   (exit 0 when every case matches)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/xen-e2e-flow.XXXXXX)
trap 'rm -rf "$W"' EXIT
FAILS=0

mkstubs() { # $1 = stub bin dir
    local d=$1; mkdir -p "$d"
    cat >"$d/xenstore-write" <<'EOF'
#!/bin/bash
mkdir -p "$XS$1"; printf '%s' "$2" >"$XS$1/.v"
EOF
    cat >"$d/xenstore-read" <<'EOF'
#!/bin/bash
[ -f "$XS$1/.v" ] && cat "$XS$1/.v"
EOF
    cat >"$d/xenstore-list" <<'EOF'
#!/bin/bash
[ -d "$XS$1" ] && ls "$XS$1"
EOF
    cat >"$d/xenstore-exists" <<'EOF'
#!/bin/bash
[ -d "$XS$1" ]
EOF
    cat >"$d/xenstore-rm" <<'EOF'
#!/bin/bash
rm -rf "${XS:?}$1"
EOF
    cat >"$d/xenstore-ls" <<'EOF'
#!/bin/bash
find "$XS" -name .v | sort
EOF
    cat >"$d/xenstore-watch" <<'EOF'
#!/bin/bash
sleep 0.1
EOF
    # A stand-in for xl and xl-usb: usbctrl-attach makes a connected controller,
    # usbdev-attach fills port 1, usb-list prints it.
    cat >"$d/xl" <<'EOF'
#!/bin/bash
B=/local/domain/0/backend/vusb/1 F=/local/domain/1/device/vusb
[ "$1" = -vvv ] && shift
case "$1" in
  usbctrl-attach) n=$(xenstore-list $B 2>/dev/null | sort -n | tail -1); n=$(( ${n:--1} + 1 ))
     xenstore-write $B/$n/state 4; xenstore-write $F/$n/state 4; xenstore-write $B/$n/port/1 "" ;;
  usbdev-attach) n=$(xenstore-list $B | sort -n | tail -1); xenstore-write $B/$n/port/1 1-1 ;;
  usbdev-detach) xenstore-write $B/$3/port/${4:-1} "" ;;
  usbctrl-detach) xenstore-rm $B/$3; xenstore-rm $F/$3 ;;
  usb-list) echo "Devid Type BE state"; echo "  Port 1: Bus 001 Device 002 (1-1)" ;;
  create) xenstore-write /local/domain/2/data/e2e/ready 1 ;;
  domid) echo 2 ;;
  destroy) ;;
  *) exit 1 ;;
esac
EOF
    # The qusb round looks for the guest's device model.
    printf '#!/bin/sh\necho 4242\n' >"$d/pgrep"
    chmod +x "$d"/*
}

# run_case NAME BINARIES GUEST_FAIL EXPECT...: run the pvusb rounds; each EXPECT is
# "step=STATUS" that must appear in the summary.
run_case() {
    local name=$1 bins=$2 gfail=$3; shift 3
    local c="$W/$name"; mkdir -p "$c/e2e/bin" "$c/xs" "$c/stub"
    mkstubs "$c/stub"
    for b in $bins; do
        case "$b" in
            pvusb-backend) printf '#!/bin/sh\necho "rings mapped split_chain=true"\necho "busid=\\"2-2\\" this bus does not stop an endpoint at a short packet"\necho "port{port=3 busid=\\"2-2\\"}: device detached held=7"\ntrap "exit 0" TERM\nwhile :; do sleep 0.2; done\n' >"$c/e2e/bin/pvusb-backend" ;;
            xl-usb) ln -s "$c/stub/xl" "$c/e2e/bin/xl-usb" ;;
        esac
    done
    chmod +x "$c"/e2e/bin/* 2>/dev/null
    local fe=0; [[ " $bins " == *" pvusb-frontend "* ]] && fe=1
    printf 'HOST_QEMU_START=%s\nREQUIRE_PVUSB=0\nHAVE_FRONTEND=%s\nIO_MB=16\nROUND_ORDER=%s\n' \
        "$EPOCHREALTIME" "$fe" "$ORDER" >"$c/e2e/run.env"
    (
        export XS="$c/xs" PATH="$c/stub:$PATH" E2E="$c/e2e" E2E_SOURCE_ONLY=1
        # shellcheck source=scenario-dom0.sh
        . "$HERE/scenario-dom0.sh"
        # The guest agent, scripted: GUEST_FAIL names a command that fails.
        guest_cmd() {
            local t=$1; shift; GSEQ=$((GSEQ + 1))
            if [ "$1" = "$gfail" ]; then GOUT="scripted failure of $1"; return 1; fi
            if [ "$gfail" = crash-backend ] && [ "$1" = io-test ] && [ "$2" != done ]; then
                gfail=""; kill -KILL "$BACKEND_PID"; nap; GOUT="backend crashed"; return 1
            fi
            case "$1" in
                io-test) GOUT="dev=sda mb=$2 write_mbps=0.50 read_mbps=0.80 sha256=abc match=yes" ;;
                *) GOUT="ok $*" ;;
            esac
        }
        nap() { sleep 0.05; }
        # The stick in a stand-in sysfs; the host agent's unplug/replug remove and restore it.
        USB_SYS="$c/usb"; mkdir -p "$USB_SYS/1-1" "$USB_SYS/2-1" "$USB_SYS/2-2"; echo 2 >"$USB_SYS/1-1/devnum"
        echo 46f4 >"$USB_SYS/2-1/idVendor"; echo PVUSB0002 >"$USB_SYS/2-2/serial"
        mkdir -p "$USB_SYS/2-3"; echo "QEMU USB Keyboard" >"$USB_SYS/2-3/product"
        host_cmd() {
            case "$1" in
                usb-unplug) rm -rf "$USB_SYS/1-1" ;;
                usb-replug) mkdir -p "$USB_SYS/1-1"; echo 3 >"$USB_SYS/1-1/devnum" ;;
            esac
        }
        GDOMID=1 GDATA=/local/domain/1/data/e2e OK_GUEST=1 OK_STICK=1 NATIVE_READ=1.60
        pvusb_rounds
        round_qusb
        finish
    ) >"$c/out.log" 2>&1
    local e want got ok=1
    for e in "$@"; do
        want=${e#*=}; got=$(awk -F'\t' -v s="${e%%=*}" '$1 == s { print $2 }' "$c/e2e/results/summary.tsv")
        if [ "$got" != "$want" ]; then echo "  $name: ${e%%=*} is '${got:-absent}', want $want"; ok=0; fi
    done
    if grep -q 'command not found\|unbound variable\|syntax error' "$c/out.log"; then
        echo "  $name: shell error:"; grep 'command not found\|unbound variable\|syntax error' "$c/out.log" | head -3; ok=0
    fi
    if [ "$ok" = 1 ]; then echo "PASS $name"; else echo "FAIL $name (log $c/out.log)"; cp -r "$c" "/tmp/xen-e2e-flow-$name"; FAILS=$((FAILS + 1)); fi
}

# The default order: Linux's xen-hcd round first, then ours.
ORDER=stock-first
run_case none "" "" 1/backend-start=SKIP 4/io-ours-vhci=SKIP 5/io-stock-xen-hcd=SKIP dom0/finished=PASS
run_case all "pvusb-backend pvusb-frontend xl-usb" "" \
    1/backend-start=PASS 5/load-stock=PASS 3/usbctrl-attach-stock-xl=PASS 5/usbdev-attach-stock=PASS \
    5/usb-list-stock=PASS 5/io-stock-xen-hcd=PASS 5/backend-restart-stock=PASS 5/host-unplug-stock=PASS 2/switch-to-ours=PASS 3/usbctrl-attach-xl-usb=PASS 3/second-controller=PASS \
    3/usbdev-attach=PASS 3/usb-list=PASS 4/io-ours-vhci=PASS 4/iso-out-ours=PASS 4/io-ours-xhci=PASS 6/detach-while-open=PASS 6/reattach=PASS \
    6/backend-restart=PASS 6/host-unplug=PASS 1/backend-stop=PASS 8/qusb-guest-create=PASS 8/qusb-frontend-start=PASS \
    8/qusb-usbdev-attach=PASS 8/io-ours-qusb=PASS 7/read-ratio-ours=INFO 7/read-ratio-stock=INFO \
    7/read-ratio-qusb=INFO dom0/finished=PASS
run_case no-frontend "pvusb-backend xl-usb" "" \
    1/backend-start=PASS 5/load-stock=PASS 5/io-stock-xen-hcd=PASS 2/switch-to-ours=SKIP 4/io-ours-vhci=SKIP \
    8/qusb-guest-create=SKIP 8/io-ours-qusb=SKIP
run_case guest-io-fails "pvusb-backend pvusb-frontend xl-usb" io-test \
    5/io-stock-xen-hcd=FAIL 2/switch-to-ours=PASS 4/io-ours-vhci=FAIL 6/detach-while-open=SKIP
run_case hold-open-fails "pvusb-backend pvusb-frontend xl-usb" hold-open \
    5/io-stock-xen-hcd=PASS 4/io-ours-vhci=PASS 6/detach-while-open=FAIL 6/reattach=SKIP
run_case keyboard-silent "pvusb-backend pvusb-frontend xl-usb" kbd-got \
    5/io-stock-xen-hcd=PASS 5/backend-restart-stock=FAIL 5/host-unplug-stock=SKIP 4/io-ours-vhci=PASS \
    6/backend-restart=FAIL 6/host-unplug=SKIP
run_case backend-crashes "pvusb-backend pvusb-frontend xl-usb" crash-backend \
    5/io-stock-xen-hcd=FAIL 5/io-stock-xen-hcd/backend-died=FAIL 2/switch-to-ours=PASS \
    4/io-ours-vhci=PASS 1/backend-stop=PASS

# E2E_ORDER=ours-first: our round first, then the stock one.
ORDER=ours-first
run_case ours-first-all "pvusb-backend pvusb-frontend xl-usb" "" \
    1/backend-start=PASS 2/frontend-start=PASS 3/usbctrl-attach-xl-usb=PASS 3/second-controller=PASS 3/usbdev-attach=PASS \
    3/usb-list=PASS 4/io-ours-vhci=PASS 6/detach-while-open=PASS 6/reattach=PASS 6/backend-restart=PASS 6/host-unplug=PASS \
    5/switch-to-stock=PASS 3/usbctrl-attach-stock-xl=PASS 5/usbdev-attach-stock=PASS 5/usb-list-stock=PASS \
    5/io-stock-xen-hcd=PASS 5/host-unplug-stock=PASS 1/backend-stop=PASS 7/read-ratio-ours=INFO 7/read-ratio-stock=INFO dom0/finished=PASS
run_case ours-first-no-frontend "pvusb-backend xl-usb" "" \
    1/backend-start=PASS 2/frontend-start=SKIP 4/io-ours-vhci=SKIP 5/switch-to-stock=PASS 5/io-stock-xen-hcd=PASS
run_case ours-first-backend-crashes "pvusb-backend pvusb-frontend xl-usb" crash-backend \
    4/io-ours-vhci=FAIL 4/io-ours-vhci/backend-died=FAIL 6/reattach=SKIP 5/switch-to-stock=PASS \
    5/io-stock-xen-hcd=PASS 1/backend-stop=PASS
[ "$FAILS" -eq 0 ] && echo "selftest-flow: PASS" || echo "selftest-flow: FAIL ($FAILS cases)"
[ "$FAILS" -eq 0 ]
