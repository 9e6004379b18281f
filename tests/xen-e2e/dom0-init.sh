#!/bin/sh
# dom0's PID 1 (exec'd by the loader initramfs from the payload disk mounted at /e2e):
# mount the usual filesystems and xenfs, load the Xen device drivers, start xenstored and
# xenconsoled, run scenario-dom0.sh, copy logs to /e2e/results and power the machine off.
# Whatever happens, it ends in a poweroff (or, if that fails, a dom0 crash that makes Xen
# reboot, which ends QEMU because of -no-reboot).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C
cd /
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
# devtmpfs has no /dev/fd (udev makes it): bash process substitution needs it.
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin; ln -sfn /proc/self/fd/1 /dev/stdout; ln -sfn /proc/self/fd/2 /dev/stderr
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock /run/xen /var/log/xen/console
hostname dom0
RESULTS=/e2e/results
mkdir -p "$RESULTS"
# Core dumps of anything that crashes go to the results (run.sh prints which programs).
mkdir -p "$RESULTS/cores"
echo "$RESULTS/cores/core.%e.%p" >/proc/sys/kernel/core_pattern
ulimit -c unlimited
echo "dom0-init: userspace at uptime $(cut -d' ' -f1 /proc/uptime)"
# dom0's console (hvc0) ends up in the serial log; keep a copy on the payload disk too.
. /e2e/run.env
# End the scenario ourselves well before run.sh's global timeout kills QEMU, so that the
# results disk is unmounted cleanly and the partial summary survives.
budget=$(awk -v a="$HOST_QEMU_START" -v b="$(date +%s.%N)" -v t="$SCENARIO_DEADLINE" 'BEGIN { v = t - (b - a); if (v < 30) v = 30; printf "%d", v }')
echo "dom0-init: scenario budget ${budget}s"
( timeout -k 10 "$budget" bash /e2e/scenario-dom0.sh </dev/null; rc=$?
  [ "$rc" = 124 ] && printf 'dom0/scenario-budget\tFAIL\tscenario killed after %ss (dom0 budget)\n' "$budget" >>"$RESULTS/summary.tsv"
  echo "dom0-init: scenario exited rc=$rc" ) 2>&1 | tee "$RESULTS/dom0-scenario.log"

cp /var/log/xen/console/*.log "$RESULTS/" 2>/dev/null
cp /var/log/xen/*.log "$RESULTS/" 2>/dev/null
dmesg >"$RESULTS/dom0-dmesg.log" 2>&1
echo "dom0-init: powering off at uptime $(cut -d' ' -f1 /proc/uptime)"
sync
umount /e2e 2>/dev/null || mount -o remount,ro /e2e
sync
busybox poweroff -f
sleep 10
