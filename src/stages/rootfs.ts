// The rootfs stage: the guest's root file system as a staging directory (design.md, "rootfs").
//   busybox install tree (cp -a, linuxrc removed) + the layout directories + rootfs-skel/ overlay
//   (`*.hbs` rendered) + the modules slot; the device table is parsed and returned, not created:
//   an unprivileged user cannot mknod, so the image stage makes the nodes (and makes everything
//   root:root). The content hash identifies the tree independently of times and owners.
//
// Nothing is ever written through a symlink of the staging tree: directories are created one
// component at a time and refuse a symlink on the way, and a file replaces whatever non-directory
// was at its path instead of writing into it. So a symlink like lib -> /usr/lib in an install tree
// or skel can never make the stage write outside the staging directory.
import { constants } from 'node:fs';
import { chmod, copyFile, lstat, mkdir, readdir, readFile, readlink, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import Handlebars from 'handlebars';
import { formatDeviceNode, parseDeviceTable, type DeviceNode } from '../fs/devtable.js';
import { abortError, DomuError, errorMessage, InputError } from '../core/errors.js';
import { run } from '../core/exec.js';
import { sha256, sha256File } from '../core/hash.js';
import type { StageContext } from '../core/context.js';
import type { Description } from '../model/schema.js';

/** Bump when what the stage produces for the same inputs changes (layout, modes, hash format). */
export const ROOTFS_VERSION = 1;

/** Directories every guest root has (design.md), with their modes; parents are created 0755. */
export const ROOTFS_DIRS: readonly { path: string; mode: number }[] = [
  { path: 'dev', mode: 0o755 },
  { path: 'proc', mode: 0o755 },
  { path: 'sys', mode: 0o755 },
  { path: 'lib', mode: 0o755 },
  { path: 'lib/modules', mode: 0o755 },
  { path: 'etc', mode: 0o755 },
  { path: 'etc/rc.d', mode: 0o755 },
  { path: 'boot', mode: 0o755 },
  { path: 'mnt', mode: 0o755 },
  { path: 'media', mode: 0o755 },
  { path: 'opt', mode: 0o755 },
  { path: 'misc', mode: 0o755 },
  { path: 'root', mode: 0o700 },
  { path: 'tmp', mode: 0o1777 },
];

/** Template files of the skel: rendered with handlebars, written without this suffix. */
export const TEMPLATE_SUFFIX = '.hbs';

export interface ModuleFile {
  /** The module file on the build host. */
  src: string;
  /** Path in the guest, relative to its root, e.g. lib/modules/6.1.0/kernel/drivers/net/xen-netfront.ko. */
  dest: string;
}

export interface RootfsInput {
  /** busybox install tree (bin/ sbin/ usr/ linuxrc); read only, copied. */
  installTree: string;
  /** Directory laid over the guest root (rootfs-skel/). */
  skel: string;
  /** The device table file (rootfs-devices.txt). */
  deviceTable: string;
  /** The guest settings; templates see them as `guest.*`. */
  guest: Description['guest'];
  /** Filled by the modules stage: module files, and the text of /etc/modules (the load list). */
  modules?: { files: ModuleFile[]; etcModules?: string };
}

export interface RootfsOutput {
  /** The staging tree, `<workDir>/rootfs`. */
  staging: string;
  /** Device nodes for the image stage to create (not present in the staging tree). */
  devices: DeviceNode[];
  /** Counts of the staging tree (its root not counted). */
  files: number;
  dirs: number;
  symlinks: number;
  /** Total size of the regular files. */
  bytes: number;
  /** sha256 over the sorted listing (path, type, mode, size, content hash or link target) and the device table. */
  contentHash: string;
}

/** One entry of the staging tree, as hashed. */
export interface RootfsEntry {
  /** Relative, `/`-separated. */
  path: string;
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  size?: number;
  sha256?: string;
  target?: string;
}

type SkelEntry =
  | { rel: string; kind: 'dir'; mode: number }
  | { rel: string; kind: 'file'; mode: number; src: string }
  | { rel: string; kind: 'rendered'; mode: number; text: string; template: string }
  | { rel: string; kind: 'symlink'; target: string };

export async function rootfsStage(input: RootfsInput, ctx: StageContext): Promise<RootfsOutput> {
  const checkAbort = () => {
    if (ctx.signal.aborted) throw abortError(ctx.signal);
  };

  // Everything that can be wrong with the inputs is found before anything is written.
  await requireDir(input.installTree, 'busybox install tree');
  if (!(await exists(join(input.installTree, 'bin', 'sh')))) {
    throw new InputError(`busybox install tree ${input.installTree} has no bin/sh`, 'the guest boots with init=/bin/sh: install busybox with its applet links');
  }
  await requireDir(input.skel, 'skel directory');
  const devices = parseDeviceTable(await readInput(input.deviceTable, 'device table'), input.deviceTable);
  const skel = await scanSkel(input.skel, { guest: { ...input.guest } });
  const moduleFiles = await checkModules(input.modules?.files ?? []);
  checkAbort();

  const staging = resolve(ctx.workDir, 'rootfs');
  await mkdir(dirname(staging), { recursive: true });
  await removeTree(ctx, staging);
  const release = ctx.cleanup.tempPath(staging);

  // 1. The install tree, as `cp -a` copies it (symlinks kept), without linuxrc (no initrd here).
  ctx.progress('copying the install tree');
  await run(ctx, 'cp', ['-a', '--', input.installTree, staging], { missingHint: 'install coreutils' });
  await chmod(staging, 0o755);
  await rm(join(staging, 'linuxrc'), { recursive: true, force: true });
  checkAbort();

  // 2. The layout, with explicit modes (whatever the umask and the install tree had).
  for (const d of ROOTFS_DIRS) await ensureDir(staging, d.path, d.mode, 'layout directory');

  // 3. The skel overlay.
  ctx.progress('laying the skel over the root');
  for (const e of skel) {
    const where = `skel ${join(input.skel, e.kind === 'rendered' ? e.template : e.rel)}`;
    if (e.kind === 'dir') {
      await ensureDir(staging, e.rel, e.mode, where, { keepExisting: true });
      continue;
    }
    await ensureDir(staging, dirname(e.rel), undefined, where, { keepExisting: true });
    const dest = await clearForFile(staging, e.rel, where);
    if (e.kind === 'symlink') await symlink(e.target, dest);
    else {
      if (e.kind === 'file') await copyFile(e.src, dest, constants.COPYFILE_EXCL);
      else await writeFile(dest, e.text, { flag: 'wx' });
      await chmod(dest, e.mode);
    }
  }
  checkAbort();

  // 4. The modules slot.
  for (const m of moduleFiles) {
    const where = `module ${m.src}`;
    await ensureDir(staging, dirname(m.dest), undefined, where, { keepExisting: true });
    const dest = await clearForFile(staging, m.dest, where);
    await copyFile(m.src, dest, constants.COPYFILE_EXCL);
    await chmod(dest, 0o644);
  }
  if (input.modules?.etcModules !== undefined) {
    const dest = await clearForFile(staging, 'etc/modules', 'the module load list');
    await writeFile(dest, input.modules.etcModules, { flag: 'wx' });
    await chmod(dest, 0o644);
  }

  // 5. The device nodes' directories exist (so that the image stage only has to mknod), and
  //    nothing else already has a node's name.
  for (const n of devices) {
    const rel = n.path.slice(1);
    const where = `${input.deviceTable}:${n.line}`;
    await ensureDir(staging, dirname(rel), undefined, where, { keepExisting: true });
    if (await exists(join(staging, rel))) {
      throw new InputError(`${where}: ${n.path} already exists in the root file system (from the install tree, the skel or the modules); a device node cannot replace it`);
    }
  }
  checkAbort();

  ctx.progress('hashing the tree');
  const entries = await listTree(staging);
  const contentHash = rootfsContentHash(entries, devices);
  const out: RootfsOutput = { staging, devices, files: 0, dirs: 0, symlinks: 0, bytes: 0, contentHash };
  for (const e of entries) {
    if (e.type === 'file') {
      out.files++;
      out.bytes += e.size ?? 0;
    } else if (e.type === 'dir') out.dirs++;
    else out.symlinks++;
  }
  release();
  ctx.log.info(
    `root file system staged in ${staging}: ${out.files} files, ${out.dirs} directories, ${out.symlinks} symlinks, ` +
      `${out.bytes} bytes, ${devices.length} device nodes for the image; content ${contentHash.slice(0, 16)}`,
  );
  return out;
}

/** sha256 identifying a staging tree and its device nodes (no times, owners or table line numbers). */
export function rootfsContentHash(entries: readonly RootfsEntry[], devices: readonly DeviceNode[]): string {
  const lines = [`domu-rootfs v${ROOTFS_VERSION}`];
  const sorted = [...entries].sort((a, b) => compare(a.path, b.path));
  for (const e of sorted) {
    const what = e.type === 'file' ? [e.size, e.sha256] : e.type === 'symlink' ? [e.target] : [];
    lines.push(JSON.stringify([e.path, e.type, e.mode.toString(8), ...what]));
  }
  const devs = [...devices].sort((a, b) => compare(a.path, b.path));
  for (const n of devs) lines.push(`device ${formatDeviceNode(n)}`);
  return sha256(`${lines.join('\n')}\n`);
}

/** The staging tree as hashed: every entry below `root`, sorted by path. */
export async function listTree(root: string): Promise<RootfsEntry[]> {
  const out: RootfsEntry[] = [];
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(rel ? join(root, rel) : root)).sort(compare);
    for (const name of names) {
      const path = rel ? `${rel}/${name}` : name;
      const abs = join(root, path);
      const st = await lstat(abs);
      const mode = st.mode & 0o7777;
      if (st.isDirectory()) {
        out.push({ path, type: 'dir', mode });
        await walk(path);
      } else if (st.isSymbolicLink()) {
        out.push({ path, type: 'symlink', mode, target: await readlink(abs) });
      } else if (st.isFile()) {
        out.push({ path, type: 'file', mode, size: st.size, sha256: await sha256File(abs) });
      } else {
        throw new InputError(`${abs}: ${kindOf(st)} in the root file system (from the install tree?): only regular files, directories and symlinks can be staged`);
      }
    }
  };
  await walk('');
  return out;
}

// ---------------------------------------------------------------------------------------------

/** Byte-wise order (locale-independent), the same on every machine. */
function compare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function kindOf(st: { isFIFO(): boolean; isSocket(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean }): string {
  if (st.isFIFO()) return 'a fifo';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'a special file';
}

/**
 * Modes of skel entries: kept, except that group and other write are dropped unless the sticky
 * bit is set (a checkout under umask 002 must give the same tree as one under umask 022; a
 * world-writable sticky directory like tmp/ is meant as such).
 */
function skelMode(mode: number): number {
  const m = mode & 0o7777;
  return m & 0o1000 ? m : m & ~0o022;
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

async function requireDir(path: string, what: string): Promise<void> {
  let st;
  try {
    st = await stat(path);
  } catch (e) {
    throw new InputError(`${what} ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : errorMessage(e)}`);
  }
  if (!st.isDirectory()) throw new InputError(`${what} ${path}: not a directory`);
}

async function readInput(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    throw new InputError(`${what} ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : errorMessage(e)}`);
  }
}

/** Remove a previous staging tree, also when the install tree made some of it read-only. */
async function removeTree(ctx: StageContext, path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM') throw e;
    await run(ctx, 'chmod', ['-R', 'u+rwx', '--', path]);
    await rm(path, { recursive: true, force: true });
  }
}

/** Read the skel: its entries in creation order (parents first), templates rendered. */
async function scanSkel(skel: string, data: { guest: Record<string, unknown> }): Promise<SkelEntry[]> {
  const out: SkelEntry[] = [];
  const targets = new Map<string, string>(); // staged path -> skel path that produces it
  const hb = Handlebars.create();
  const claim = (rel: string, from: string) => {
    const other = targets.get(rel);
    if (other !== undefined) throw new InputError(`skel ${join(skel, from)}: ${rel} is also produced by ${join(skel, other)}`);
    targets.set(rel, from);
  };
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(rel ? join(skel, rel) : skel)).sort(compare);
    for (const name of names) {
      const path = rel ? `${rel}/${name}` : name;
      const abs = join(skel, path);
      const st = await lstat(abs);
      if (st.isDirectory()) {
        claim(path, path);
        out.push({ rel: path, kind: 'dir', mode: skelMode(st.mode) });
        await walk(path);
      } else if (st.isSymbolicLink()) {
        claim(path, path);
        out.push({ rel: path, kind: 'symlink', target: await readlink(abs) });
      } else if (st.isFile() && name.endsWith(TEMPLATE_SUFFIX)) {
        if (name === TEMPLATE_SUFFIX) throw new InputError(`skel ${abs}: a template needs a name before ${TEMPLATE_SUFFIX}`);
        const dest = path.slice(0, -TEMPLATE_SUFFIX.length);
        claim(dest, path);
        let text: string;
        try {
          const template = hb.compile(await readFile(abs, 'utf8'), { strict: true, noEscape: true });
          text = template(data);
        } catch (e) {
          throw new InputError(`skel ${abs}: template error: ${templateError(errorMessage(e))}`, `templates see ${Object.keys(data.guest).map((k) => `guest.${k}`).join(', ')}`);
        }
        out.push({ rel: dest, kind: 'rendered', mode: skelMode(st.mode), text, template: path });
      } else if (st.isFile()) {
        claim(path, path);
        out.push({ rel: path, kind: 'file', mode: skelMode(st.mode), src: abs });
      } else {
        throw new InputError(`skel ${abs}: ${kindOf(st)}: only regular files, directories and symlinks can be laid over the root`);
      }
    }
  };
  await walk('');
  return out;
}

/** Handlebars' messages, readable: `"nme" not defined in [object Object] - 1:2` → `line 1, column 2: no value for "nme"`. */
function templateError(msg: string): string {
  const m = /^"(.*)" not defined in .* - (\d+):(\d+)$/s.exec(msg);
  if (m) return `line ${m[2]}, column ${m[3]}: no value for "${m[1]}" (a missing value is an error)`;
  return msg.replace(/\s+/g, ' ').trim();
}

/** Validate the modules slot: sources are regular files, destinations plain relative paths, no duplicates. */
async function checkModules(files: readonly ModuleFile[]): Promise<ModuleFile[]> {
  const seen = new Set<string>();
  for (const m of files) {
    const parts = m.dest.split('/');
    if (m.dest.startsWith('/') || parts.some((p) => p === '' || p === '.' || p === '..') || /[\0\n]/.test(m.dest)) {
      throw new DomuError(`module ${m.src}: destination ${JSON.stringify(m.dest)} is not a plain path relative to the guest root`);
    }
    if (seen.has(m.dest)) throw new DomuError(`module ${m.src}: destination ${m.dest} is given twice`);
    seen.add(m.dest);
    let st;
    try {
      st = await stat(m.src);
    } catch (e) {
      throw new InputError(`module ${m.src}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : errorMessage(e)}`);
    }
    if (!st.isFile()) throw new InputError(`module ${m.src}: not a regular file`);
  }
  return [...files];
}

/**
 * Make `rel` (relative to `root`) a directory, creating missing components (0755, or `mode` for the
 * last one) without following any symlink. An existing last component gets `mode` unless
 * keepExisting. `where` names the cause in errors.
 */
async function ensureDir(root: string, rel: string, mode: number | undefined, where: string, opts: { keepExisting?: boolean } = {}): Promise<void> {
  if (rel === '.' || rel === '') return;
  const parts = rel.split('/');
  let cur = root;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as string;
    cur = join(cur, part);
    const last = i === parts.length - 1;
    const want = last && mode !== undefined ? mode : 0o755;
    let st;
    try {
      st = await lstat(cur);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      await mkdir(cur);
      await chmod(cur, want);
      continue;
    }
    const shown = parts.slice(0, i + 1).join('/');
    if (st.isSymbolicLink()) {
      throw new InputError(`${where}: ${rel} would be created through ${shown}, which is a symlink in the root file system (to ${await readlink(cur)})`);
    }
    if (!st.isDirectory()) throw new InputError(`${where}: ${rel} needs ${shown} to be a directory, but the root file system has a file there`);
    if (last && mode !== undefined && !opts.keepExisting) await chmod(cur, want);
  }
}

/** Make room for a file or symlink at `rel`: an existing file or symlink is removed (never written through). */
async function clearForFile(root: string, rel: string, where: string): Promise<string> {
  const dest = join(root, rel);
  let st;
  try {
    st = await lstat(dest);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return dest;
    throw e;
  }
  if (st.isDirectory()) throw new InputError(`${where}: ${rel} is a directory in the root file system and cannot be replaced by a file`);
  await unlink(dest);
  return dest;
}
