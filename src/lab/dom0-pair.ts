// The lab's two Dom0s: the first two hosts of the inventory, each a nested Xen (xen/nested-xen.ts)
// with the inventory's name, bridge, address and NIC MAC, both attached to the same LUNs of the
// lab's tgtd through QEMU's own iSCSI client and linked where a real Dom0's open-iscsi + udev put
// them (/dev/disk/by-path/ip-<server>:3260-iscsi-<iqn>-lun-<n>), so the generated configs are used
// unchanged; joined by a private segment (segment.ts) on which their bridges see each other.
//
// The shared ext4 store (LUN 1) is mounted as the operating model says:
//   store.disk lun   read-only on both (the lab published it from this machine before they booted)
//   store.disk file  read-write on the first only; the second mounts it when the first has let go
//                    (ext4 is not a cluster file system), so the guest boots on each in turn.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { StageContext } from '../core/context.js';
import { netmaskPrefix } from '../model/network.js';
import type { Description } from '../model/schema.js';
import type { Dom0Params, Dom0Ssh } from '../xen/dom0-params.js';
import { GUEST_LUN, lunByPath, STORE_LUN } from '../xen/lun.js';
import { XenHost, type XenHostParts } from '../xen/nested-xen.js';
import { waitForListener } from './segment.js';

export interface LabHostInfo {
  name: string;
  address: string;
  bridge: string;
  nic: string;
  /** The segment NIC's MAC: the inventory's hwaddr, else one derived from the host name. */
  mac: string;
  /** The store path on this host (store_path override or store.path). */
  storePath: string;
  /** This host's generated domain config, relative to the store. */
  config: string;
}

/** A locally administered MAC (02:…) from the host name, for hosts without hwaddr. */
function derivedHostMac(name: string): string {
  const h = createHash('sha256').update(`domu-lab-host:${name}`).digest();
  return ['02', ...[...h.subarray(0, 5)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** The first two hosts of the inventory, as the lab uses them. */
export function labHosts(desc: Description): [LabHostInfo, LabHostInfo] {
  const pick = (i: number): LabHostInfo => {
    const h = desc.hosts[i]!;
    return { name: h.name, address: h.address, bridge: h.bridge, nic: h.nic, mac: h.hwaddr ?? derivedHostMac(h.name), storePath: h.store_path ?? desc.store.path, config: `xen/${h.name}/${desc.guest.name}.cfg` };
  };
  return [pick(0), pick(1)];
}

/** Host `i`'s dom0 parameters (values only; checked by dom0ParamFiles). */
export function labDom0Params(desc: Description, hosts: readonly [LabHostInfo, LabHostInfo], i: 0 | 1, extra: { guestAddress?: string | undefined; ssh?: Dom0Ssh; scripts?: Record<string, string> }): Dom0Params {
  const h = hosts[i];
  const lun = desc.store.disk === 'lun';
  const links = [{ serial: `lun-${STORE_LUN}`, path: lunByPath(desc, STORE_LUN) }, ...(lun ? [{ serial: `lun-${GUEST_LUN}`, path: lunByPath(desc, GUEST_LUN) }] : [])];
  return {
    hostname: h.name,
    bridge: { name: h.bridge, address: h.address, prefix: netmaskPrefix(desc.network.netmask), nic: h.nic },
    diskLinks: links,
    store: { device: lunByPath(desc, STORE_LUN), path: h.storePath, mount: lun ? 'ro' : i === 0 ? 'rw' : 'off' },
    guestName: desc.guest.name,
    guestAddress: extra.guestAddress,
    guestConfig: h.config,
    ...(lun ? {} : { guestImage: desc.image.file }),
    peerAddress: hosts[1 - i]!.address,
    ...(extra.ssh ? { ssh: extra.ssh } : {}),
    ...(extra.scripts ? { scripts: extra.scripts } : {}),
  };
}

export interface Dom0PairSpec {
  parts: XenHostParts;
  params: readonly [Dom0Params, Dom0Params];
  hosts: readonly [LabHostInfo, LabHostInfo];
  /** iscsi:// URL of each LUN the dom0s attach, by LUN number. */
  luns: readonly { lun: number; url: string }[];
  /** The segment's TCP port on 127.0.0.1. */
  port: number;
  dir: string;
  readyTimeoutS: number;
}

/**
 * Start both dom0s: the first (the segment's listening end), then, once its QEMU listens, the
 * second. Returns both start promises: they boot side by side. Each QEMU is killed through the
 * cleanup registry if the run fails or is stopped.
 */
export async function startDom0Pair(ctx: StageContext, spec: Dom0PairSpec): Promise<[Promise<XenHost>, Promise<XenHost>]> {
  const start = (i: 0 | 1) => {
    const h = spec.hosts[i];
    ctx.log.info(`lab: starting ${h.name} (${h.bridge} ${h.address}, NIC ${h.mac}, LUNs ${spec.luns.map((l) => l.lun).join(', ')}, segment 127.0.0.1:${spec.port} ${i === 0 ? 'listening' : 'connecting'})`);
    return XenHost.start(ctx, {
      ...spec.parts,
      params: spec.params[i],
      sharedDisks: spec.luns.map((l) => ({ url: l.url, serial: `lun-${l.lun}` })),
      segment: { mac: h.mac, port: spec.port, role: i === 0 ? 'listen' : 'connect' },
      readyTimeoutS: spec.readyTimeoutS,
      dir: join(spec.dir, h.name),
    });
  };
  const first = start(0);
  let failed = false;
  first.catch(() => (failed = true));
  try {
    await waitForListener(spec.port, 30_000, () => !failed, ctx.signal);
  } catch (e) {
    await first.then((h) => h.stop(), () => undefined);
    throw e;
  }
  return [first, start(1)];
}
