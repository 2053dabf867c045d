#!/usr/bin/env bash
# The floor for bench/build.ts: the whole job done by hand with plain tools, on the same inputs
# as `domu build` (busybox tarball, kernel package tree, rootfs-skel, device table): compile
# (baseline-compile.sh), the root tree, the modules, a sparse 1 GiB ext4 image with mke2fs -d and
# the device nodes by debugfs, e2fsck, a gzip cpio ramdisk, two domain configs, sha256sum.
# No reproducibility passes, no checks beyond e2fsck: the least work that gives the same files.
# Usage: baseline-build.sh TARBALL WORKDIR COMPAT_HEADER MODULES_DIR SKEL
set -eu
tarball=$1 work=$2 compat=$3 mods=$4 skel=$5
here=$(cd "$(dirname "$0")" && pwd)
release=$(basename "$mods")
"$here/baseline-compile.sh" "$tarball" "$work" "$compat"
root=$work/rootfs
cp -a "$work/install" "$root"
rm -f "$root/linuxrc"
(cd "$root" && mkdir -p dev proc sys lib/modules etc/rc.d boot mnt media opt misc tmp root)
cp -a "$skel/." "$root/"
mv "$root/etc/hostname.hbs" "$root/etc/hostname" && echo busybox > "$root/etc/hostname"
mkdir -p "$root/lib/modules/$release/kernel/drivers/net"
cp "$mods/kernel/drivers/net/xen-netfront.ko" "$root/lib/modules/$release/kernel/drivers/net/"
cp "$mods/kernel/drivers/net/xen-netfront.ko" "$root/lib/modules/"
echo "kernel/drivers/net/xen-netfront.ko:" > "$root/lib/modules/$release/modules.dep"
echo xen_netfront >> "$root/etc/modules"
img=$work/busybox.img
truncate -s 1G "$img"
mke2fs -q -t ext4 -d "$root" "$img"
debugfs -w -f - "$img" >/dev/null 2>&1 <<'DEBUGFS'
cd /dev
mknod console c 5 1
mknod null c 1 3
mknod zero c 1 5
mknod tty c 5 0
mknod ptmx c 5 2
mknod random c 1 8
mknod urandom c 1 9
mknod hvc0 c 229 0
mknod xvda b 202 0
mknod xvda1 b 202 1
DEBUGFS
e2fsck -fn "$img" >/dev/null
rd=$work/initrd
mkdir -p "$rd/bin" "$rd/dev" "$rd/proc" "$rd/sys" "$rd/newroot" "$rd/lib/modules/$release"
cp "$root/bin/busybox" "$rd/bin/"
ln -s busybox "$rd/bin/sh"
for m in drivers/block/xen-blkfront.ko crypto/crc32c_generic.ko arch/x86/crypto/crc32c-intel.ko fs/jbd2/jbd2.ko fs/mbcache.ko lib/crc16.ko fs/ext4/ext4.ko \
         drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko; do
  mkdir -p "$rd/lib/modules/$release/kernel/$(dirname "$m")"
  cp "$mods/kernel/$m" "$rd/lib/modules/$release/kernel/$m"
done
cp "$here/../initramfs/init" "$rd/init"
(cd "$rd" && find . | sort | cpio -o -H newc -R 0:0 --quiet | gzip -n > "$work/initrd.gz")
for h in test1 test2; do
  mkdir -p "$work/xen/$h"
  printf 'name = "busybox"\nkernel = "/scsistore/boot/vmlinuz-%s"\nmemory = 512\nvcpus = 1\ndisk = [ %s ]\nvif = [ %s ]\n' \
    "$release" "'format=raw, vdev=xvda, access=rw, target=/scsistore/busybox.img'" "'bridge=xenbr0'" > "$work/xen/$h/busybox.cfg"
done
sha256sum "$img" "$work/initrd.gz" >/dev/null
