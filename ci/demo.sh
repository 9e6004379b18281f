#!/usr/bin/env bash
# The README's main command: build the pvusb binaries and run the simulated end-to-end demo.
# Extra arguments go to `xl-usb demo` (try `ci/demo.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
cargo build --release --quiet --bins \
    -p xl-usb -p pvusb-backend -p pvusb-frontend -p xenstore-cfg -p pvusb-xen
exec target/release/xl-usb demo "$@"
