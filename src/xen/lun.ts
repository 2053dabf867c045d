// The guest's disk as its own iSCSI LUN (store.disk: lun): the name every Dom0 gives it. A disk
// image file on the shared ext4 store cannot be migrated safely (blocks a guest allocates on one
// Dom0 change ext4 metadata the other Dom0 never re-reads), so the safe layout gives the guest a
// whole LUN of its own, which each Dom0 sees as a block device and only the running one opens.
//
// open-iscsi + udev (60-persistent-storage.rules) name a LUN
// /dev/disk/by-path/ip-<portal address>:<port>-iscsi-<target iqn>-lun-<n>: the same name on every
// Dom0 that logged in to the same portal, unlike /dev/sdX, which depends on the order of discovery.
// The domain configs, the publish and the lab all use this one function, so they cannot disagree.

/** The iSCSI port the Dom0s log in on (open-iscsi's default, the one in the by-path name). */
export const ISCSI_PORT = 3260;
// targets.conf gives both numbers explicitly (`<backing-store PATH>` blocks with `lun N`):
// tgt-admin numbers plain `backing-store` lines by their sorted paths, not by line order, so
// with paths that sort the other way the guest's disk would silently become LUN 1.
/** The store's LUN: its file system (store.backing_store), which every Dom0 mounts. */
export const STORE_LUN = 1;
/** The guest's LUN: its disk (store.disk_backing_store), opened by the Dom0 running the guest. */
export const GUEST_LUN = 2;

/** The by-path device name of the guest's LUN, as udev names it on every Dom0. */
export function lunDevicePath(desc: { store: { server: string; iqn: string } }): string {
  return lunByPath(desc, GUEST_LUN);
}

/** The by-path name of LUN `lun` of the store's target (LUN 1: the store's file system). */
export function lunByPath(desc: { store: { server: string; iqn: string } }, lun: number): string {
  return `/dev/disk/by-path/ip-${desc.store.server}:${ISCSI_PORT}-iscsi-${desc.store.iqn}-lun-${lun}`;
}
