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
//   usr/sbin/dropbear, usr/bin/dbclient (+ usr/bin/ssh → dbclient)   dropbear-bin: `xl migrate
//                                     <guest> <host>` runs `ssh <host> xl migrate-receive` (the lab)
//   usr/bin/xl → the Xen tool         dropbear's PATH for a command (xl migrate-receive) may lack sbin
//   etc/passwd, group, shadow, shells root with /bin/sh and home /root (dropbear looks it up)
// Reproducible: mtime 0, owner 0, sorted (cpio.ts). Cached as `dom0-initramfs/<key>`, the key a
// hash of every entry (path, type, mode, link target, sha256 of the bytes): a warm hit recomputes
// the entry list and the key, and writes nothing.
//
// The per-run parameters are NOT in it (dom0-params.ts appends them as a second archive).
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { StageContext } from '../core/context.js';
import { DomuError } from '../core/errors.js';
import { run } from '../core/exec.js';
import { hashValue, sha256 } from '../core/hash.js';
import { projectPath } from '../core/paths.js';
import { writeCpioGzip, type CpioEntry } from '../fs/cpio.js';
import { moduleClosure, transitiveDepends } from '../kernel/closure.js';
import { parseElf } from '../kernel/elf.js';
import type { KernelPackage } from '../kernel/kernel.js';
import { indexModules } from '../kernel/modindex.js';
import { readModinfo, readModuleBytes } from '../kernel/modinfo.js';
import type { XenPackages } from './xen-packages.js';

export const DOM0_INIT = projectPath('initramfs', 'dom0-init');
const HELPERS = ['domu-guest-send', 'domu-guest-log'] as const;
/**
 * Modules of dom0: Xen backends and devices, loop + bridge for the hotplug scripts, the store disk,
 * the lab's segment NIC, and virtio-rng: without a hardware RNG (qemu64 has no RDRAND) the kernel's
 * random pool takes 30-60 s under TCG to initialise, and dropbear waits for it before `xl migrate`.
 */
export const DOM0_MODULES = ['xen-evtchn', 'xen-gntdev', 'xen-gntalloc', 'xen-privcmd', 'xenfs', 'xen-blkback', 'xen-netback', 'loop', 'bridge', 'virtio_pci', 'virtio_blk', 'virtio_net', 'virtio-rng', 'ext4'] as const;
/** The tools xl and xencommons use, from usr/lib/xen-<v>/bin. */
export const XEN_TOOLS = ['xl', 'xenstored', 'xenconsoled', 'xenconsole', 'xen-init-dom0', 'libxl-save-helper'] as const;
/** GNU programs (and bash) the hotplug scripts need, where Debian puts them. */
const GNU_TOOLS = { 'bin/bash': 'usr/bin/bash', 'usr/bin/stat': 'usr/bin/stat', 'usr/bin/flock': 'usr/bin/flock', 'sbin/losetup': 'usr/sbin/losetup' } as const;
/** dropbear-bin: the lab's ssh server and client. */
const SSH_TOOLS = { 'usr/sbin/dropbear': 'usr/sbin/dropbear', 'usr/bin/dbclient': 'usr/bin/dbclient' } as const;
/** root for dropbear (getpwnam, getusershell); '*': no password login (keys only). */
const ACCOUNTS = {
  'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\n',
  'etc/shadow': 'root:*:19000:0:99999:7:::\n',
  'etc/group': 'root:x:0:\n',
  'etc/shells': '/bin/sh\n/bin/bash\n',
} as const;
const LIB_DIRS = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu'];
const LIB_OUT = 'usr/lib/x86_64-linux-gnu';
/** Bump when the layout changes without its content changing. */
const LAYOUT_VERSION = 2;
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
  for (const [from, to] of Object.entries({ ...GNU_TOOLS, ...SSH_TOOLS })) {
    const e = await hostFile(root, from, to, 'program');
    entries.push(e);
    elfs.push({ path: join(root, from), data: e.data });
  }
  for (const t of XEN_TOOLS) {
    const rel = `usr/lib/xen-${v}/bin/${t}`;
    const e = await hostFile(root, rel, rel, 'Xen tool');
    entries.push(e, { type: 'symlink', path: `usr/sbin/${t}`, target: `../lib/xen-${v}/bin/${t}` });
    if (t === 'xl') entries.push({ type: 'symlink', path: 'usr/bin/xl', target: `../lib/xen-${v}/bin/xl` });
    elfs.push({ path: join(root, rel), data: e.data });
  }
  for (const n of readdirSync(join(root, 'usr/bin')).filter((x) => /^xenstore(-[a-z]+)?$/.test(x)).sort()) {
    if (!lstatSync(join(root, 'usr/bin', n)).isFile()) continue; // xenstore-control: Debian's version wrapper
    const e = await hostFile(root, `usr/bin/${n}`, `usr/bin/${n}`, 'xenstore tool');
    entries.push(e);
    elfs.push({ path: join(root, 'usr/bin', n), data: e.data });
  }
  entries.push({ type: 'symlink', path: 'usr/bin/ssh', target: 'dbclient' });
  for (const [path, text] of Object.entries(ACCOUNTS)) entries.push(fileEntry(path, Buffer.from(text), path === 'etc/shadow' ? 0o600 : 0o644));
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
