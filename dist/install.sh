#!/bin/sh
# Builds and installs pvusb: pvusb-backend, pvusb-frontend and xl-usb into $PREFIX/sbin,
# the systemd units into $UNITDIR, example configuration into /etc/pvusb.
#
#   dist/install.sh [--no-build] [--static] [--enable backend|frontend|rules]...
#
# --no-build   install what target/release holds (or $BIN_DIR) without running cargo
# --static     build statically linked binaries (for busybox-only guests)
# --enable X   enable and start a unit: backend (driver domain / dom0), rules (dom0),
#              frontend (guest)
# Environment: PREFIX (/usr/local), UNITDIR (/etc/systemd/system), CONFDIR (/etc/pvusb),
# DESTDIR (staging root; nothing is enabled or reloaded when set), BIN_DIR.
set -eu
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
UNITDIR=${UNITDIR:-/etc/systemd/system}
CONFDIR=${CONFDIR:-/etc/pvusb}
DESTDIR=${DESTDIR:-}
BINS="pvusb-backend pvusb-frontend xl-usb"
build=1
static=0
enable=""

while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --static) static=1 ;;
        --enable) shift; enable="$enable ${1:?--enable needs backend, frontend or rules}" ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$build" = 1 ]; then
    command -v cargo >/dev/null || { echo "install.sh: cargo not found (https://rustup.rs)" >&2; exit 1; }
    if [ "$static" = 1 ]; then
        target=x86_64-unknown-linux-gnu
        RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
            cargo build --release --locked --target "$target" \
            -p pvusb-backend -p pvusb-frontend -p xl-usb --bins
        BIN_DIR=${BIN_DIR:-target/$target/release}
    else
        cargo build --release --locked -p pvusb-backend -p pvusb-frontend -p xl-usb --bins
    fi
fi
BIN_DIR=${BIN_DIR:-target/release}

for b in $BINS; do
    [ -x "$BIN_DIR/$b" ] || { echo "install.sh: $BIN_DIR/$b missing (build first, or set BIN_DIR)" >&2; exit 1; }
    install -D -m 0755 "$BIN_DIR/$b" "$DESTDIR$PREFIX/sbin/$b"
done

for u in dist/systemd/*.service; do
    dst="$DESTDIR$UNITDIR/$(basename "$u")"
    install -D -m 0644 "$u" "$dst"
    if [ "$PREFIX" != /usr/local ]; then
        sed -i "s|/usr/local/sbin/|$PREFIX/sbin/|g" "$dst"
    fi
    if [ "$CONFDIR" != /etc/pvusb ]; then
        sed -i "s|/etc/pvusb/|$CONFDIR/|g" "$dst"
    fi
done

install -d -m 0755 "$DESTDIR$CONFDIR"
install -m 0644 dist/examples/rules.toml "$DESTDIR$CONFDIR/rules.toml.example"
if [ ! -e "$DESTDIR$CONFDIR/backend.toml" ]; then
    install -m 0644 dist/examples/backend.toml "$DESTDIR$CONFDIR/backend.toml"
fi

echo "installed $BINS into $DESTDIR$PREFIX/sbin, units into $DESTDIR$UNITDIR, examples into $DESTDIR$CONFDIR"

if [ -z "$DESTDIR" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    for e in $enable; do
        case "$e" in
            backend) systemctl enable --now pvusb-backend.service ;;
            frontend) systemctl enable --now pvusb-frontend.service ;;
            rules) systemctl enable --now xl-usb-rules.service ;;
            *) echo "install.sh: --enable $e: expected backend, frontend or rules" >&2; exit 2 ;;
        esac
    done
elif [ -n "$enable" ]; then
    echo "install.sh: not enabling$enable (DESTDIR set or no running systemd)"
fi
