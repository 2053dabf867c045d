// The per-run values of a nested dom0 (initramfs/dom0-init reads them). They are NOT in the cached
// dom0 ramdisk (dom0-initramfs.ts): dom0ParamsArchive() makes a small second gzip cpio with
//   etc/domu-lab/<name>       one value per file, each checked here against a narrow character
//                             set (and again by dom0-init), never turned into shell text
//   etc/domu-scripts/<name>   fixed scripts of the caller (never values of the description)
//   etc/dropbear/…, root/.ssh/…  the lab's ssh keys (xl migrate runs `ssh <host> xl migrate-receive`)
// and writeDom0Initrd() appends it to a copy of the cached archive (the kernel unpacks
// concatenated archives in order).
import { copyFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { gzipSync } from 'node:zlib';
import { tempPathFor } from '../core/atomic.js';
import type { StageContext } from '../core/context.js';
import { DomuError } from '../core/errors.js';
import { cpioArchive, type CpioEntry } from '../fs/cpio.js';
import type { Dom0Initramfs } from './dom0-initramfs.js';

/** A shared disk as dom0 sees it: a virtio disk with this serial, linked at `path` (e.g. /dev/disk/by-path/…). */
export interface Dom0DiskLink {
  serial: string;
  path: string;
}

/** The lab's ssh material for one dom0 (all of it made for the run, see lab/ssh-keys.ts). */
export interface Dom0Ssh {
  /** This dom0's host key, dropbear format (etc/dropbear/dropbear_ed25519_host_key). */
  hostKey: Buffer;
  /** The client key both dom0s use as root (root/.ssh/id_dropbear), dropbear format. */
  clientKey: Buffer;
  /** root/.ssh/authorized_keys: the client key's public line. */
  authorizedKeys: string;
  /** root/.ssh/known_hosts: `<address> <host public key>` of every dom0. */
  knownHosts: string;
}

/** Per-run values of the dom0, each written to etc/domu-lab/<name> (see initramfs/dom0-init). */
export interface Dom0Params {
  hostname: string;
  /** Bridge name and its IPv4 address/prefix (none: no bridge); `nic`: a NIC to enslave to it. */
  bridge?: { name: string; address?: string | undefined; prefix?: number | undefined; nic?: string | undefined } | undefined;
  /** Links to shared disks, made before the store is mounted. */
  diskLinks?: readonly Dom0DiskLink[] | undefined;
  /** The store disk inside dom0 (e.g. /dev/vda) and where to mount it: rw (default), ro, or off (later) (none: no store). */
  store?: { device: string; path: string; mount?: 'rw' | 'ro' | 'off' | undefined } | undefined;
  /** A domain whose console log dom0 streams onto its console ("G| " lines). */
  guestName?: string | undefined;
  /** The guest's own IPv4 address (dom0 pings it). */
  guestAddress?: string | undefined;
  /** The guest's domain config, relative to the store path (e.g. xen/test1/busybox.cfg). */
  guestConfig?: string | undefined;
  /** The guest's disk image, relative to the store path. */
  guestImage?: string | undefined;
  /** The other dom0's address (the lab migrates to it). */
  peerAddress?: string | undefined;
  /** Start an ssh server (dropbear, on the bridge address) with these keys. */
  ssh?: Dom0Ssh | undefined;
  /**
   * Fixed texts of the caller (never values of the description), as files etc/domu-scripts/<name>:
   * long scripts read from a file in dom0 instead of being typed on the serial console, whose
   * input Xen buffers in 128 bytes.
   */
  scripts?: Record<string, string> | undefined;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
const RELATIVE = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/;
/** A device path: /dev/vda, or a udev-style link such as /dev/disk/by-path/ip-1.2.3.4:3260-iscsi-iqn.…:t1-lun-2. */
const DEVICE = /^\/dev\/[A-Za-z0-9_.:-]+(\/[A-Za-z0-9_.:-]+)*$/;
const SERIAL = /^[A-Za-z0-9_-]{1,20}$/;
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;

const PARAM_CHECKS: Record<string, [RegExp, string]> = {
  hostname: [/^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$/, 'letters, digits, "." and "-", at most 63'],
  bridge: [IFNAME, 'a network interface name: letters, digits, "_", "." and "-", at most 15'],
  nic: [IFNAME, 'a network interface name: letters, digits, "_", "." and "-", at most 15'],
  address: [IPV4, 'a dotted IPv4 address'],
  prefix: [/^([0-9]|[12][0-9]|3[0-2])$/, 'a prefix length 0..32'],
  store_device: [DEVICE, 'a device path such as /dev/vda (letters, digits, "_", ".", ":" and "-")'],
  store_path: [/^(\/[A-Za-z0-9_.-]+)+$/, 'an absolute path of letters, digits, "_", "." and "-"'],
  store_options: [/^(ro|rw|off)$/, 'ro, rw or off'],
  guest_name: [/^[A-Za-z0-9_.-]{1,64}$/, 'a domain name: letters, digits, "_", "." and "-"'],
  guest_address: [IPV4, 'a dotted IPv4 address'],
  guest_config: [RELATIVE, 'a relative path of letters, digits, "_", "." and "-"'],
  guest_image: [RELATIVE, 'a relative path of letters, digits, "_", "." and "-"'],
  peer_address: [IPV4, 'a dotted IPv4 address'],
};

function checked(name: string, value: string, [re, what]: [RegExp, string]): string {
  if (!re.test(value) || (/^(store_path|guest_config|guest_image|store_device|disk_links)$/.test(name) && value.split('/').some((c) => c === '.' || c === '..'))) {
    throw new DomuError(`dom0 parameter ${name} ${JSON.stringify(value)} is not ${what}`, { hint: 'fix the value in the inventory or the caller' });
  }
  return value;
}

/** The parameter files, each value checked (one line naming the bad one otherwise). */
export function dom0ParamFiles(p: Dom0Params): Record<string, string> {
  const files: Record<string, string | undefined> = {
    hostname: p.hostname,
    bridge: p.bridge?.name,
    nic: p.bridge?.nic,
    address: p.bridge?.address,
    prefix: p.bridge?.prefix === undefined ? undefined : String(p.bridge.prefix),
    store_device: p.store?.device,
    store_path: p.store?.path,
    store_options: p.store === undefined ? undefined : (p.store.mount ?? 'rw'),
    guest_name: p.guestName,
    guest_address: p.guestAddress,
    guest_config: p.guestConfig,
    guest_image: p.guestImage,
    peer_address: p.peerAddress,
  };
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(files)) if (value !== undefined) out[name] = `${checked(name, value, PARAM_CHECKS[name]!)}\n`;
  // One link per line: "<serial> <path>" (dom0-init reads them with `read -r serial path`).
  if (p.diskLinks?.length) {
    out.disk_links = p.diskLinks
      .map((l) => `${checked('disk_links', l.serial, [SERIAL, 'a disk serial: letters, digits, "_" and "-", at most 20'])} ${checked('disk_links', l.path, [DEVICE, 'a device path under /dev'])}\n`)
      .join('');
  }
  if (p.ssh && !out.address) throw new DomuError('dom0 parameter ssh needs the bridge address to listen on');
  return out;
}

/** The small gzip cpio with etc/domu-lab/<name> files (and scripts, keys), appended after the cached ramdisk. */
export async function dom0ParamsArchive(p: Dom0Params): Promise<Buffer> {
  const file = (path: string, data: string | Buffer, mode = 0o644): CpioEntry => ({ type: 'file', path, mode, data: Buffer.from(data) });
  const entries: CpioEntry[] = Object.entries(dom0ParamFiles(p)).map(([n, v]) => file(`etc/domu-lab/${n}`, v));
  for (const [n, text] of Object.entries(p.scripts ?? {})) {
    if (!/^[a-z0-9-]+$/.test(n)) throw new Error(`dom0 script name ${JSON.stringify(n)}: [a-z0-9-] only`);
    entries.push(file(`etc/domu-scripts/${n}`, text));
  }
  if (p.ssh) {
    // dropbear refuses keys and authorized_keys that others can write, and a group-writable ~/.ssh.
    entries.push(
      { type: 'dir', path: 'etc/dropbear', mode: 0o755 },
      file('etc/dropbear/dropbear_ed25519_host_key', p.ssh.hostKey, 0o600),
      { type: 'dir', path: 'root/.ssh', mode: 0o700 },
      file('root/.ssh/id_dropbear', p.ssh.clientKey, 0o600),
      file('root/.ssh/authorized_keys', p.ssh.authorizedKeys, 0o600),
      file('root/.ssh/known_hosts', p.ssh.knownHosts, 0o644),
    );
  }
  return gzipSync(await cpioArchive(entries, { mtime: 0 }), { level: 9 });
}

/** The dom0's initrd for one run at `output`: the cached ramdisk, then the parameter archive. */
export async function writeDom0Initrd(ctx: StageContext, initramfs: Dom0Initramfs, params: Dom0Params, output: string): Promise<void> {
  const extra = await dom0ParamsArchive(params);
  const tmp = tempPathFor(output);
  const release = ctx.cleanup.tempPath(tmp);
  try {
    await copyFile(initramfs.path, tmp);
    await writeFile(tmp, extra, { flag: 'a' });
    await rename(tmp, output);
  } finally {
    await rm(tmp, { force: true });
    release();
  }
  ctx.log.debug(`dom0 initrd ${output}: ${initramfs.path} + parameters (${Object.keys(dom0ParamFiles(params)).join(', ')}) in ${dirname(output)}`);
}
