#!/bin/busybox sh
# dom0's first userspace: load the modules needed to mount the root disk (virtio + ext4),
# mount the (snapshot) root /dev/vda and the per-run payload disk /dev/vdb at /e2e, then hand
# over to the payload's dom0-init.sh as PID 1.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "loader: loading $(wc -l </modules/order) modules"
while read -r m; do insmod "$m" || echo "loader: insmod $m failed"; done </modules/order
i=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do
    i=$((i + 1)); [ "$i" -gt 100 ] && break; sleep 0.1
done
if mount -t ext4 /dev/vda /newroot && mkdir -p /newroot/e2e && mount -t ext4 /dev/vdb /newroot/e2e \
    && [ -f /newroot/e2e/dom0-init.sh ]; then
    umount /proc /sys
    mount --move /dev /newroot/dev
    exec switch_root /newroot /bin/sh /e2e/dom0-init.sh
fi
echo "loader: cannot mount the root or payload disk"; ls -l /dev/vd* 2>&1
# Crashing dom0 makes Xen reboot, which ends QEMU (-no-reboot).
exit 1
