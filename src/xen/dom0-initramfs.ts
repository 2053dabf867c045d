// The dom0 ramdisk of the nested Xen host (facts.md, "What a minimal dom0 initramfs needs"), made
// by our cpio writer from the Debian packages of xen-packages.ts and a Debian kernel package:
//   init                              initramfs/dom0-init (xencommons' order, then the parameters)
//   usr/bin/busybox + applet links    busybox-static (bin, sbin, lib, lib64 link into usr/)
//   usr/bin/bash, stat, flock; usr/sbin/losetup   GNU tools the hotplug scripts need
//   usr/lib/xen-<v>/bin/{xl,xenstored,xenconsoled,xenconsole,xen-init-dom0,libxl-save-helper}
//   usr/sbin/<same names>             links to them; usr/bin/xenstore-* (xenstore-utils)
//   usr/lib/x86_64-linux-gnu/<soname> every library the binaries' DT_NEEDED entries reach (our ELF
//                                     reader), libgcc_s.so.1 (pthread_cancel dlopens it) and
//                                     usr/lib64/ld-linux-x86-64.so.2 (their PT_INTERP)
//   etc/xen/scripts/*, etc/xen/xl.conf
//   usr/lib/modules/<release>/…       the Xen backends, loop, bridge, virtio disk and ext4, with
//                                     their closure (kmod semantics); load order in etc/domu-dom0/modules
//   usr/bin/domu-guest-send, usr/bin/domu-guest-log   initramfs/ helpers (no user values in them)
// Reproducible: mtime 0, owner 0, sorted (cpio.ts). Cached as `dom0-initramfs/<key>`, the key a
// hash of every entry (path, type, mode, link target, sha256 of the bytes): a warm hit recomputes
// the entry list and the key, and writes nothing.
//
// The per-run parameters are NOT in it: dom0ParamsArchive() makes a small second gzip cpio with
// etc/domu-lab/<name> (one value each), and writeDom0Initrd() appends it to a copy of the cached
// archive (the kernel unpacks concatenated archives in order).
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { copyFile, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';
import { gzipSync } from 'node:zlib';
import { tempPathFor } from '../core/atomic.js';
import type { StageContext } from '../core/context.js';
import { DomuError } from '../core/errors.js';
import { run } from '../core/exec.js';
import { hashValue, sha256 } from '../core/hash.js';
import { projectPath } from '../core/paths.js';
import { cpioArchive, writeCpioGzip, type CpioEntry } from '../fs/cpio.js';
import { moduleClosure, transitiveDepends } from '../kernel/closure.js';
import { parseElf } from '../kernel/elf.js';
import type { KernelPackage } from '../kernel/kernel.js';
import { indexModules } from '../kernel/modindex.js';
import { readModinfo, readModuleBytes } from '../kernel/modinfo.js';
import type { XenPackages } from './xen-packages.js';

export const DOM0_INIT = projectPath('initramfs', 'dom0-init');
const HELPERS = ['domu-guest-send', 'domu-guest-log'] as const;
/** Modules of dom0: Xen backends and devices, loop + bridge for the hotplug scripts, the store disk. */
export const DOM0_MODULES = ['xen-evtchn', 'xen-gntdev', 'xen-gntalloc', 'xen-privcmd', 'xenfs', 'xen-blkback', 'xen-netback', 'loop', 'bridge', 'virtio_pci', 'virtio_blk', 'ext4'] as const;
/** The tools xl and xencommons use, from usr/lib/xen-<v>/bin. */
export const XEN_TOOLS = ['xl', 'xenstored', 'xenconsoled', 'xenconsole', 'xen-init-dom0', 'libxl-save-helper'] as const;
/** GNU programs (and bash) the hotplug scripts need, where Debian puts them. */
const GNU_TOOLS = { 'bin/bash': 'usr/bin/bash', 'usr/bin/stat': 'usr/bin/stat', 'usr/bin/flock': 'usr/bin/flock', 'sbin/losetup': 'usr/sbin/losetup' } as const;
const LIB_DIRS = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu'];
const LIB_OUT = 'usr/lib/x86_64-linux-gnu';
/** Bump when the layout changes without its content changing. */
const LAYOUT_VERSION = 1;
const CACHE_KIND = 'dom0-initramfs';
const ARCHIVE = 'dom0-initrd.gz';
const INFO = 'info.json';

export interface Dom0Initramfs {
  /** The cached gzip cpio (read only: writeDom0Initrd copies it). */
  path: string;
  key: string;
  size: number;
  uncompressedSize: number;
  entries: number;
  release: string;
  modules: string[];
  libraries: string[];
  /** Taken from the cache (nothing written). */
  hit: boolean;
  seconds: number;
}

/** A file entry whose bytes are kept for the key. */
type Entry = CpioEntry & { sha256?: string };
type FileEntry = { type: 'file'; path: string; mode: number; data: Buffer; sha256: string };

function fileEntry(path: string, data: Buffer, mode: number): FileEntry {
  return { type: 'file', path, mode, data, sha256: sha256(data) };
}

async function hostFile(root: string, rel: string, out: string, what: string): Promise<FileEntry> {
  const p = join(root, rel);
  let data: Buffer;
  try {
    data = await readFile(p);
  } catch {
    throw new DomuError(`dom0 ramdisk: ${what} ${rel} is not in ${root}`, { hint: 'the Xen package entry is incomplete: remove it from the cache and run again' });
  }
  return fileEntry(out, data, (await stat(p)).mode & 0o7777);
}

/** The libraries `elfs` need, transitively, by soname → file in the package tree (first of LIB_DIRS). */
function libraryClosure(root: string, elfs: readonly { path: string; data: Buffer }[], extra: readonly string[]): Map<string, string> {
  const found = new Map<string, string>();
  const queue: { soname: string; by: string }[] = [];
  const want = (elf: { path: string; data: Buffer }) => queue.push(...parseElf(elf.data, elf.path).needed().map((soname) => ({ soname, by: elf.path })));
  elfs.forEach(want);
  queue.push(...extra.map((soname) => ({ soname, by: 'dom0 (dlopen)' })));
  for (let next = queue.shift(); next; next = queue.shift()) {
    if (found.has(next.soname)) continue;
    const dir = LIB_DIRS.find((d) => existsSync(join(root, d, next.soname)));
    if (!dir) throw new DomuError(`dom0 ramdisk: ${next.by} needs ${next.soname}, which no fetched package provides`, { hint: 'add its Debian package to DOM0_PACKAGES in src/xen/xen-packages.ts' });
    const file = join(root, dir, next.soname);
    found.set(next.soname, file);
    want({ path: file, data: readFileSync(file) }); // a few dozen files: synchronous is simplest
  }
  return found;
}

/** Every entry of the dom0 ramdisk (see the file comment), without the parameters. */
export async function dom0Entries(ctx: StageContext, xen: XenPackages, kernel: KernelPackage): Promise<{ entries: Entry[]; modules: string[]; libraries: string[] }> {
  const root = xen.root;
  const v = xen.majorMinor;
  const entries: Entry[] = [];
  for (const [path, target] of [['bin', 'usr/bin'], ['sbin', 'usr/sbin'], ['lib', 'usr/lib'], ['lib64', 'usr/lib64'], ['var/run', '../run']] as const) entries.push({ type: 'symlink', path, target });
  for (const d of ['dev', 'proc', 'sys', 'run', 'tmp', 'root', 'var/lib/xen', 'var/log/xen/console', 'var/lock']) entries.push({ type: 'dir', path: d, mode: d === 'tmp' ? 0o1777 : 0o755 });
  entries.push({ type: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 }, { type: 'char', path: 'dev/null', mode: 0o666, major: 1, minor: 3 });
  entries.push(fileEntry('init', await readFile(DOM0_INIT), 0o755));
  for (const h of HELPERS) entries.push(fileEntry(`usr/bin/${h}`, await readFile(projectPath('initramfs', h)), 0o755));

  // busybox and its applet links (GNU tools and the files above win over applets of the same name).
  const busybox = await hostFile(root, 'bin/busybox', 'usr/bin/busybox', 'busybox-static');
  entries.push(busybox);
  const elfs: { path: string; data: Buffer }[] = [];
  for (const [from, to] of Object.entries(GNU_TOOLS)) {
    const e = await hostFile(root, from, to, 'program');
    entries.push(e);
    elfs.push({ path: join(root, from), data: e.data });
  }
  for (const t of XEN_TOOLS) {
    const rel = `usr/lib/xen-${v}/bin/${t}`;
    const e = await hostFile(root, rel, rel, 'Xen tool');
    entries.push(e, { type: 'symlink', path: `usr/sbin/${t}`, target: `../lib/xen-${v}/bin/${t}` });
    elfs.push({ path: join(root, rel), data: e.data });
  }
  for (const n of readdirSync(join(root, 'usr/bin')).filter((x) => /^xenstore(-[a-z]+)?$/.test(x)).sort()) {
    if (!lstatSync(join(root, 'usr/bin', n)).isFile()) continue; // xenstore-control: Debian's version wrapper
    const e = await hostFile(root, `usr/bin/${n}`, `usr/bin/${n}`, 'xenstore tool');
    entries.push(e);
    elfs.push({ path: join(root, 'usr/bin', n), data: e.data });
  }
  const taken = new Set(entries.map((e) => e.path));
  const applets = (await run(ctx, join(root, 'bin/busybox'), ['--list-full'], { quiet: true })).stdout.split('\n').filter(Boolean);
  for (const a of applets) {
    const path = a.replace(/^(s?bin)\//, 'usr/$1/');
    if (!taken.has(path) && !taken.has(path.replace('/sbin/', '/bin/')) && !taken.has(path.replace('/bin/', '/sbin/'))) {
      entries.push({ type: 'symlink', path, target: posix.relative(posix.dirname(path), 'usr/bin/busybox') });
      taken.add(path);
    }
  }

  // Libraries: DT_NEEDED, transitively; the interpreter every binary names.
  const interp = parseElf(elfs[0]!.data, elfs[0]!.path).interpreter();
  if (interp !== '/lib64/ld-linux-x86-64.so.2') throw new DomuError(`dom0 ramdisk: ${elfs[0]!.path} asks for the interpreter ${interp ?? '(none)'}, not /lib64/ld-linux-x86-64.so.2`);
  entries.push(await hostFile(root, 'lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', 'usr/lib64/ld-linux-x86-64.so.2', 'the dynamic loader'));
  const libs = libraryClosure(root, elfs, ['libgcc_s.so.1']);
  for (const [soname, file] of [...libs].sort()) entries.push(fileEntry(`${LIB_OUT}/${soname}`, readFileSync(file), 0o644));

  // Xen's scripts and global config.
  for (const n of readdirSync(join(root, 'etc/xen/scripts')).sort()) {
    const rel = `etc/xen/scripts/${n}`;
    if (lstatSync(join(root, rel)).isSymbolicLink()) entries.push({ type: 'symlink', path: rel, target: readlinkSync(join(root, rel)) });
    else entries.push(await hostFile(root, rel, rel, 'hotplug script'));
  }
  entries.push(await hostFile(root, 'etc/xen/xl.conf', 'etc/xen/xl.conf', "xl's global config"));

  // Modules: the closure, decompressed, with a modules.dep for busybox modprobe and a load list.
  const index = await indexModules(kernel.modules, { cache: ctx.cache, env: ctx, progress: ctx.progress });
  const closure = await moduleClosure(index, DOM0_MODULES, { readInfo: (f) => readModinfo(f, ctx) });
  const modDir = `usr/lib/modules/${kernel.release}`;
  const dest = (p: string) => p.replace(/\.ko(\.(gz|xz|zst))?$/, '.ko');
  for (const m of closure.modules) entries.push(fileEntry(`${modDir}/${dest(m.path)}`, await readModuleBytes(m.file, ctx), 0o644));
  const deps = transitiveDepends(closure);
  const depText = closure.modules.map((m) => `${dest(m.path)}:${deps.get(m.name)!.map((d) => ` ${dest(d.path)}`).join('')}\n`).join('');
  entries.push(fileEntry(`${modDir}/modules.dep`, Buffer.from(depText), 0o644));
  // `try`: a soft dependency may refuse this CPU (crc32c-intel on qemu64: no SSE4.2), as modprobe allows.
  const loadList = `# Loaded in this order by /init; dependencies first. need: must load; try: a soft dependency.\n${closure.modules.map((m) => `${m.kind === 'softdep' ? 'try' : 'need'} /lib/modules/${kernel.release}/${dest(m.path)}\n`).join('')}`;
  entries.push(fileEntry('etc/domu-dom0/modules', Buffer.from(loadList), 0o644));
  return { entries, modules: closure.modules.map((m) => m.name), libraries: [...libs.keys()].sort() };
}

/** The key of an entry list: every path, type, mode, link target, device and content hash. */
export function dom0Key(entries: readonly Entry[]): string {
  const rows = entries.map((e) => [e.path, e.type, 'mode' in e ? e.mode : undefined, e.type === 'symlink' ? e.target : undefined, 'major' in e ? `${e.major}:${e.minor}` : undefined, e.sha256]);
  return hashValue({ v: LAYOUT_VERSION, rows: rows.sort((a, b) => String(a[0]).localeCompare(String(b[0]))) });
}

/** The dom0 ramdisk for `xen` and `kernel`, from the cache or built into it. */
export async function buildDom0Initramfs(ctx: StageContext, xen: XenPackages, kernel: KernelPackage): Promise<Dom0Initramfs> {
  const t0 = performance.now();
  ctx.progress('dom0 ramdisk: listing its files');
  const { entries, modules, libraries } = await dom0Entries(ctx, xen, kernel);
  const key = dom0Key(entries);
  const result = async (dir: string, hit: boolean): Promise<Dom0Initramfs> => {
    const info = JSON.parse(await readFile(join(dir, INFO), 'utf8')) as { uncompressedSize: number; entries: number };
    const path = join(dir, ARCHIVE);
    const size = (await stat(path)).size;
    const seconds = (performance.now() - t0) / 1000;
    ctx.log.info(`dom0 ramdisk: ${hit ? 'from the cache' : 'built'} in ${seconds.toFixed(2)} s: ${info.entries} entries, ${modules.length} modules, ${libraries.length} libraries, ${(size / 1048576).toFixed(1)} MiB gzip (${(info.uncompressedSize / 1048576).toFixed(1)} MiB) → ${path}`);
    return { path, key, size, uncompressedSize: info.uncompressedSize, entries: info.entries, release: kernel.release, modules, libraries, hit, seconds };
  };
  const hit = await ctx.cache.lookup(CACHE_KIND, key, { log: ctx.log, redo: 'building the dom0 ramdisk again' });
  if (hit) return result(hit, true);
  ctx.log.info(`dom0 ramdisk: building (${entries.length} entries, key ${key.slice(0, 16)})`);
  ctx.progress('dom0 ramdisk: writing the gzip cpio');
  const dir = await ctx.cache.store(
    CACHE_KIND,
    key,
    async (d) => {
      const w = await writeCpioGzip(join(d, ARCHIVE), entries, { mtime: 0 });
      await writeFile(join(d, INFO), `${JSON.stringify({ uncompressedSize: w.uncompressed, entries: w.entries, release: kernel.release, xen: `${xen.package} ${xen.version}` })}\n`);
    },
    (tmp) => ctx.cleanup.tempPath(tmp),
    { log: ctx.log, redo: 'replacing it' },
  );
  return result(dir, false);
}

/** Per-run values of the dom0, each written to etc/domu-lab/<name> (see initramfs/dom0-init). */
export interface Dom0Params {
  hostname: string;
  /** Bridge name and its IPv4 address/prefix (none: no bridge). */
  bridge?: { name: string; address?: string | undefined; prefix?: number | undefined } | undefined;
  /** The store disk inside dom0 (e.g. /dev/vda) and where to mount it (none: no store). */
  store?: { device: string; path: string } | undefined;
  /** A domain whose console log dom0 streams onto its console ("G| " lines). */
  guestName?: string | undefined;
  /** The guest's own IPv4 address (dom0 pings it). */
  guestAddress?: string | undefined;
  /** The guest's domain config, relative to the store path (e.g. xen/test1/busybox.cfg). */
  guestConfig?: string | undefined;
  /** The guest's disk image, relative to the store path. */
  guestImage?: string | undefined;
  /**
   * Fixed texts of the caller (never values of the description), as files etc/domu-scripts/<name>:
   * long scripts read from a file in dom0 instead of being typed on the serial console, whose
   * input Xen buffers in 128 bytes.
   */
  scripts?: Record<string, string> | undefined;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
const RELATIVE = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/;

const PARAM_CHECKS: Record<string, [RegExp, string]> = {
  hostname: [/^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$/, 'letters, digits, "." and "-", at most 63'],
  bridge: [/^[A-Za-z0-9_.-]{1,15}$/, 'a network interface name: letters, digits, "_", "." and "-", at most 15'],
  address: [IPV4, 'a dotted IPv4 address'],
  prefix: [/^([0-9]|[12][0-9]|3[0-2])$/, 'a prefix length 0..32'],
  store_device: [/^\/dev\/[A-Za-z0-9_-]+(\/[A-Za-z0-9_-]+)*$/, 'a device path such as /dev/vda'],
  store_path: [/^(\/[A-Za-z0-9_.-]+)+$/, 'an absolute path of letters, digits, "_", "." and "-"'],
  guest_name: [/^[A-Za-z0-9_.-]{1,64}$/, 'a domain name: letters, digits, "_", "." and "-"'],
  guest_address: [IPV4, 'a dotted IPv4 address'],
  guest_config: [RELATIVE, 'a relative path of letters, digits, "_", "." and "-"'],
  guest_image: [RELATIVE, 'a relative path of letters, digits, "_", "." and "-"'],
};

/** The parameter files, each value checked (one line naming the bad one otherwise). */
export function dom0ParamFiles(p: Dom0Params): Record<string, string> {
  const files: Record<string, string | undefined> = {
    hostname: p.hostname,
    bridge: p.bridge?.name,
    address: p.bridge?.address,
    prefix: p.bridge?.prefix === undefined ? undefined : String(p.bridge.prefix),
    store_device: p.store?.device,
    store_path: p.store?.path,
    guest_name: p.guestName,
    guest_address: p.guestAddress,
    guest_config: p.guestConfig,
    guest_image: p.guestImage,
  };
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(files)) {
    if (value === undefined) continue;
    const [re, what] = PARAM_CHECKS[name]!;
    if (!re.test(value) || (/^(store_path|guest_config|guest_image)$/.test(name) && value.split('/').some((c) => c === '.' || c === '..'))) {
      throw new DomuError(`dom0 parameter ${name} ${JSON.stringify(value)} is not ${what}`, { hint: 'fix the value in the inventory or the caller' });
    }
    out[name] = `${value}\n`;
  }
  return out;
}

/** The small gzip cpio with etc/domu-lab/<name> files, appended after the cached ramdisk. */
export async function dom0ParamsArchive(p: Dom0Params): Promise<Buffer> {
  const entries: CpioEntry[] = Object.entries(dom0ParamFiles(p)).map(([n, v]) => ({ type: 'file', path: `etc/domu-lab/${n}`, mode: 0o644, data: Buffer.from(v) }));
  for (const [n, text] of Object.entries(p.scripts ?? {})) {
    if (!/^[a-z0-9-]+$/.test(n)) throw new Error(`dom0 script name ${JSON.stringify(n)}: [a-z0-9-] only`);
    entries.push({ type: 'file', path: `etc/domu-scripts/${n}`, mode: 0o644, data: Buffer.from(text) });
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
