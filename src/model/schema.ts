// The build description (`guest.yaml`, design.md "Build description") as a zod schema.
// Every object is strict (an unknown key is an error); every key has the reference lab's value as
// its default, so `descriptionSchema.parse({})` is the lab. Messages here say what was expected and
// what was given; where it was given (file:line:col or flag) is added by description.ts.
import { z } from 'zod';
import { formatSize, parseSize } from '../core/size.js';
import { CIDR_RE, IQN_RE, describeValue, expected, IPV4_RE, isAbsolutePath, isNetmask, isPath, listHint, matches, oneOf, SAFE_NOTE, safeText, section, text } from './schema-parts.js';

import { guestNetworkIssues, guestNetworkSchema, STATIC_NETWORK_KEYS } from './network.js';

export { describeValue } from './schema-parts.js';

const MiB = 2 ** 20;
const MIN_IMAGE_BYTES = 16 * MiB;
const IMAGE_BLOCK = 4096;

const MAC_RE = /^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$/;
/** A MAC address for a NIC: six hex octets, not multicast (bit 0 of the first octet), not all zero. */
function isUnicastMac(s: string): boolean {
  return MAC_RE.test(s) && (parseInt(s.slice(0, 2), 16) & 1) === 0 && !/^(?:00:){5}00$/.test(s);
}

function isHttpUrl(s: string): boolean {
  if (!/^https?:\/\//.test(s)) return false;
  try {
    const u = new URL(s);
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname !== '' && u.search === '' && u.hash === '';
  } catch {
    return false;
  }
}

export const CRASH_ACTIONS = [
  'destroy',
  'restart',
  'preserve',
  'rename-restart',
  'coredump-destroy',
  'coredump-restart',
  'soft-reset',
] as const;

const memory = z
  .number({ error: (iss) => memoryMessage(iss.input) })
  .superRefine((n, ctx) => {
    if (!Number.isSafeInteger(n)) ctx.addIssue({ code: 'custom', message: memoryMessage(n) });
    else if (n < 16) ctx.addIssue({ code: 'custom', message: `expected at least 16 MiB, got ${n}` });
  });

function memoryMessage(input: unknown): string {
  let hint = '';
  if (typeof input === 'string') {
    const t = input.trim();
    let bytes: number | undefined;
    if (/^\d+$/.test(t)) bytes = Number(t) * MiB; // "512": a quoted number of MiB
    else {
      try {
        bytes = parseSize(t);
      } catch {
        bytes = undefined;
      }
    }
    if (bytes !== undefined && bytes > 0 && bytes % MiB === 0) hint = ` (write ${bytes / MiB})`;
  }
  return expected('an integer number of MiB', input, hint);
}

const vcpus = z
  .number({ error: (iss) => expected('an integer from 1 to 128', iss.input) })
  .superRefine((n, ctx) => {
    if (!Number.isInteger(n) || n < 1 || n > 128) {
      ctx.addIssue({ code: 'custom', message: expected('an integer from 1 to 128', n) });
    }
  });

/** image.size: text or bytes in, bytes out; whole 4 KiB blocks, at least 16 MiB. */
const imageSize = z.unknown().transform((v, ctx): number => {
  if (typeof v !== 'string' && typeof v !== 'number') {
    ctx.addIssue({ code: 'custom', message: expected('a size like 1G or a number of bytes', v) });
    return z.NEVER;
  }
  let bytes: number;
  try {
    bytes = parseSize(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
  if (bytes < MIN_IMAGE_BYTES) {
    ctx.addIssue({ code: 'custom', message: `expected at least ${formatSize(MIN_IMAGE_BYTES)}, got ${describeValue(v)} (${bytes} bytes)` });
    return z.NEVER;
  }
  if (bytes % IMAGE_BLOCK !== 0) {
    const up = Math.ceil(bytes / IMAGE_BLOCK) * IMAGE_BLOCK;
    ctx.addIssue({
      code: 'custom',
      message: `expected a multiple of 4096 bytes, got ${describeValue(v)} (${bytes} bytes; ${formatSize(up)} would do)`,
    });
    return z.NEVER;
  }
  return bytes;
});

export const guestSchema = section('guest settings', {
  name: text('a guest name of up to 64 characters [a-z0-9_.-], starting with a letter or digit', matches(/^[a-z0-9][a-z0-9_.-]{0,63}$/)).prefault('busybox'),
  memory: memory.prefault(512),
  /** Maximum memory in MiB (balloon limit); default: memory. */
  maxmem: memory.optional(),
  vcpus: vcpus.prefault(1),
  root: text(`a root device and options, e.g. "/dev/xvda ro" ${SAFE_NOTE}`, (s) => s.length > 0 && safeText(s)).prefault('/dev/xvda ro'),
  /** The rest of the kernel command line (console=hvc0 is added unless it names a console). */
  extra: text(`kernel command line text ${SAFE_NOTE}`, safeText).prefault('selinux=0'),
  /** The guest NIC's MAC; default: derived from the guest name inside Xen's 00:16:3e prefix. */
  mac: text('a unicast MAC address like 00:16:3e:12:34:56', isUnicastMac).transform((m) => m.toLowerCase()).optional(),
  on_crash: oneOf(CRASH_ACTIONS).prefault('destroy'),
  on_reboot: oneOf(CRASH_ACTIONS).prefault('destroy'),
  on_poweroff: oneOf(CRASH_ACTIONS).prefault('destroy'),
  /** eth0 in the guest (network.ts): { address, gateway }, dhcp or none. */
  network: guestNetworkSchema.prefault({ address: '172.16.31.4/16' }),
});

export const busyboxSchema = section('busybox settings', {
  version: text('a busybox release like 1.35.0', matches(/^\d+\.\d+\.\d+$/)).prefault('1.22.1'),
  fallback: oneOf(['distro', 'none'] as const).prefault('distro'),
  fragment: text('the path of a kconfig fragment', isPath).prefault('busybox-config/static.fragment'),
  /** A full busybox .config used instead of defconfig + fragment. */
  config: text('the path of a busybox .config', isPath).optional(),
  libc: oneOf(['glibc', 'musl'] as const).prefault('glibc'),
  /** A cross toolchain prefix (CROSS_COMPILE), e.g. aarch64-linux-gnu-; absent for a native build. */
  cross_compile: text('a toolchain prefix ending in "-", like aarch64-linux-gnu-', matches(/^[A-Za-z0-9_.+]+(-[A-Za-z0-9_.+]+)*-$/)).optional(),
  /** Base URLs; the tarball is `<mirror>/busybox-<version>.tar.bz2`. Kept without trailing `/`. */
  mirrors: z
    .array(
      text('an http(s) base URL like https://busybox.net/downloads', isHttpUrl).transform((s) => s.replace(/\/+$/, '')),
      { error: (iss) => expected('a list of http(s) base URLs', iss.input, listHint(iss.input)) },
    )
    .prefault([]),
});

export const imageSchema = section('image settings', {
  file: text('a plain file name like busybox.img (no /)', (s) => s.length > 0 && s !== '.' && s !== '..' && !s.includes('/') && safeText(s)).prefault('busybox.img'),
  size: imageSize.prefault('1G'),
  populate: oneOf(['auto', 'rootless', 'mount'] as const).prefault('auto'),
  skel: text('the path of a directory laid over the guest root', isPath).prefault('rootfs-skel'),
});

export const kernelSchema = section('kernel settings', {
  image: text('auto or an absolute path like /boot/vmlinuz-<release>', (s) => s === 'auto' || isAbsolutePath(s)).prefault('auto'),
  modules: text('auto or an absolute path like /lib/modules/<release>', (s) => s === 'auto' || isAbsolutePath(s)).prefault('auto'),
  ramdisk: text('generate, none or an absolute path', (s) => s === 'generate' || s === 'none' || isAbsolutePath(s)).prefault('generate'),
  /**
   * Copy the kernel and ramdisk into the store's boot/ (the configs name them there, the same on
   * every host); false: the configs name kernel.image / kernel.ramdisk as given, which must then
   * exist at that path on every Dom0 (the reference lab's way).
   */
  ship: z.boolean({ error: (iss) => expected('true or false', iss.input) }).prefault(true),
  package: text('a Debian package name like linux-image-amd64', matches(/^[a-z0-9][a-z0-9+.-]+$/)).prefault('linux-image-amd64'),
});

const moduleName = text('a module name like xen-netfront ([A-Za-z0-9_-])', matches(/^[A-Za-z0-9_-]+$/));

/** An out-of-tree module: a kbuild source directory, built against the guest kernel's headers. */
const moduleSource = section('out-of-tree module settings', {
  source: text('the path of an out-of-tree module source directory (with a Kbuild or Makefile)', isPath),
});

/** A `modules:` entry: a name (or alias) from the kernel's modules, or `{ source: dir }`. */
const moduleEntry = z.union([moduleName, moduleSource], {
  error: (iss) => expected('a module name like xen-netfront or { source: <dir> }', iss.input),
});

export const storeSchema = section('store settings', {
  path: text('an absolute path like /scsistore', isAbsolutePath).prefault('/scsistore'),
  server: text('an IPv4 address like 172.16.31.3', matches(IPV4_RE)).prefault('172.16.31.3'),
  iqn: text('an iSCSI name like iqn.2015-02.com.example:target (lowercase)', matches(IQN_RE)).prefault('iqn.2015-02.com.stu31:t1'),
  initiators: text('an IPv4 network like 172.16.31.0/24', matches(CIDR_RE)).prefault('172.16.31.0/24'),
  /** The target's backing store on the storage server (targets.conf). */
  backing_store: text('an absolute path like /dev/sda3', isAbsolutePath).prefault('/dev/sda3'),
  /**
   * Where the guest's disk lives: file (an image file on the store's ext4, the reference lab's
   * layout: unsafe to migrate between Dom0s that all mount it read-write) or lun (the guest's own
   * iSCSI LUN, LUN 2 of the target, opened by one Dom0 at a time).
   */
  disk: oneOf(['file', 'lun'] as const).prefault('file'),
  /** The second LUN's backing store on the storage server (targets.conf), with disk: lun. */
  disk_backing_store: text('an absolute path like /dev/sda4', isAbsolutePath).prefault('/dev/sda4'),
});

export const xenSchema = section('Xen settings', {
  /** xl (Xen ≥ 4.5) or xm (xend, the reference lab's Xen 4.2). */
  toolstack: oneOf(['xl', 'xm'] as const).prefault('xl'),
  /** pvh or pv; absent: pvh with xl, pv with xm (xenType). Not defaulted here: it follows the toolstack. */
  type: oneOf(['pvh', 'pv'] as const).optional(),
  /** xend's relocation port (xm live migration). */
  relocation_port: z
    .number({ error: (iss) => expected('a TCP port from 1 to 65535', iss.input) })
    .superRefine((n, ctx) => {
      if (!Number.isInteger(n) || n < 1 || n > 65535) ctx.addIssue({ code: 'custom', message: expected('a TCP port from 1 to 65535', n) });
    })
    .prefault(8002),
});

/** The Dom0s' network (ifcfg files), shared by every host. */
export const networkSchema = section('network settings', {
  netmask: text('an IPv4 netmask like 255.255.0.0', isNetmask).prefault('255.255.0.0'),
  gateway: text('an IPv4 address like 172.16.0.1', matches(IPV4_RE)).prefault('172.16.0.1'),
});

const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;

export const hostSchema = section('host settings', {
  name: text('a host name [a-z0-9-], starting with a letter or digit', matches(/^[a-z0-9][a-z0-9-]{0,62}$/)),
  address: text('an IPv4 address like 172.16.31.1', matches(IPV4_RE)),
  bridge: text('a bridge name of 1 to 15 characters [A-Za-z0-9_.-]', matches(IFNAME)),
  /** The physical NIC enslaved to the bridge (ifcfg-<nic>). */
  nic: text('an interface name of 1 to 15 characters [A-Za-z0-9_.-]', matches(IFNAME)).prefault('eth0'),
  /** The NIC's MAC (HWADDR in ifcfg-<nic>); optional. */
  hwaddr: text('a unicast MAC address like 08:00:27:16:d9:aa', isUnicastMac).transform((m) => m.toLowerCase()).optional(),
  /** Where this host mounts the store, when not store.path. Must agree across hosts (migration). */
  store_path: text('an absolute path like /scsistore', isAbsolutePath).optional(),
  /** This host's kernel / ramdisk path in the domain config. Must agree across hosts (migration). */
  kernel: text('an absolute path like /boot/vmlinuz-<release>', isAbsolutePath).optional(),
  ramdisk: text('an absolute path like /boot/initrd.img-<release>', isAbsolutePath).optional(),
});

const hosts = z
  .array(hostSchema, { error: (iss) => expected('a list of hosts ({ name, address, bridge })', iss.input) })
  .superRefine((list, ctx) => {
    if (list.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'expected at least one host, got an empty list' });
      return;
    }
    for (const key of ['name', 'address', 'hwaddr'] as const) {
      const seen = new Map<string, number>();
      list.forEach((h, i) => {
        const v = (h as Partial<Record<string, unknown>> | undefined)?.[key];
        if (typeof v !== 'string') return;
        const first = seen.get(v);
        if (first === undefined) seen.set(v, i);
        else ctx.addIssue({ code: 'custom', path: [i, key], message: `duplicate host ${key} ${JSON.stringify(v)} (already hosts.${first}.${key})` });
      });
    }
  }, { when: (p) => Array.isArray(p.value) }); // also when an element has other problems: report all

export const descriptionSchema = section('sections', {
  guest: guestSchema.prefault({}),
  busybox: busyboxSchema.prefault({}),
  image: imageSchema.prefault({}),
  kernel: kernelSchema.prefault({}),
  modules: z
    .array(moduleEntry, { error: (iss) => expected('a list of module names', iss.input, listHint(iss.input)) })
    .prefault(['xen-netfront']),
  store: storeSchema.prefault({}),
  xen: xenSchema.prefault({}),
  network: networkSchema.prefault({}),
  hosts: hosts.prefault([
    { name: 'test1', address: '172.16.31.1', bridge: 'xenbr0', hwaddr: '08:00:27:16:d9:aa' },
    { name: 'test2', address: '172.16.31.2', bridge: 'xenbr0', hwaddr: '08:00:27:6a:9d:57' },
  ]),
}).superRefine((d, ctx) => {
  // Cross-key checks, each at the key to fix.
  if (d.guest.maxmem !== undefined && d.guest.maxmem < d.guest.memory) {
    ctx.addIssue({ code: 'custom', path: ['guest', 'maxmem'], message: `expected at least guest.memory (${d.guest.memory} MiB), got ${d.guest.maxmem}` });
  }
  const mac = d.guest.mac;
  if (mac !== undefined) {
    d.hosts.forEach((h, i) => {
      if (h.hwaddr === mac) ctx.addIssue({ code: 'custom', path: ['guest', 'mac'], message: `${mac} is also hosts.${i}.hwaddr (${h.name}): a MAC must be unique on the network` });
    });
  }
  if (d.xen.toolstack === 'xm' && d.xen.type === 'pvh') {
    ctx.addIssue({ code: 'custom', path: ['xen', 'type'], message: 'xm (xend, Xen 4.4 and earlier) has no PVH guests: use xen.type: pv, or xen.toolstack: xl' });
  }
  if (d.store.disk === 'lun' && d.store.disk_backing_store === d.store.backing_store) {
    // tgt would export the store's own file system a second time as the guest's disk.
    ctx.addIssue({ code: 'custom', path: ['store', 'disk_backing_store'], message: `expected a backing store of its own for the guest's LUN, got store.backing_store's ${JSON.stringify(d.store.backing_store)} (the guest would write over the store's file system)` });
  }
  for (const i of guestNetworkIssues(d)) ctx.addIssue({ code: 'custom', ...i });
});

export type Description = z.output<typeof descriptionSchema>;
export type DescriptionInput = z.input<typeof descriptionSchema>;

/** The mapping sections (an empty `kernel:` in a file means "all defaults"). */
export const SECTIONS = ['guest', 'busybox', 'image', 'kernel', 'store', 'xen', 'network'] as const;

const SECTION_SCHEMAS = { guest: guestSchema, busybox: busyboxSchema, image: imageSchema, kernel: kernelSchema, store: storeSchema, xen: xenSchema, network: networkSchema };

/** The keys allowed in the mapping at `path` (for "unknown key" messages), or undefined. */
export function allowedKeys(path: readonly PropertyKey[]): string[] | undefined {
  if (path.length === 0) return Object.keys(descriptionSchema.shape);
  if (path.length === 1 && Object.hasOwn(SECTION_SCHEMAS, path[0] as string)) {
    return Object.keys(SECTION_SCHEMAS[path[0] as keyof typeof SECTION_SCHEMAS].shape);
  }
  if (path.length === 2 && path[0] === 'hosts') return Object.keys(hostSchema.shape);
  if (path.length === 2 && path[0] === 'guest' && path[1] === 'network') return STATIC_NETWORK_KEYS;
  return undefined;
}

export type XenType = 'pvh' | 'pv';

/** The guest's type: xen.type, else pvh with xl and pv with xm (xend has no PVH). */
export function xenType(d: { xen: { toolstack: 'xl' | 'xm'; type?: XenType | undefined } }): XenType {
  return d.xen.type ?? (d.xen.toolstack === 'xm' ? 'pv' : 'pvh');
}

function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === 'object') {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}

/** The reference lab (design.md): what an empty description means. Frozen; clone to modify. */
export const DEFAULTS: Description = deepFreeze(descriptionSchema.parse({}));
