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
import { chmod, copyFile, lstat, mkdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { formatDeviceNode, parseDeviceTable, type DeviceNode } from '../fs/devtable.js';
import { abortError, DomuError, errorMessage, InputError } from '../core/errors.js';
import { run } from '../core/exec.js';
import { sha256 } from '../core/hash.js';
import type { StageContext } from '../core/context.js';
import type { Description } from '../model/schema.js';
import { NETWORK_FILE } from '../model/network.js';
import { clearForFile, compare, ensureDir, listTree, type RootfsEntry } from './rootfs-tree.js';
import { scanSkel } from './rootfs-skel.js';

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
  /** The guest's network settings: the text of /etc/network.conf and the applets rcS needs for them. */
  network?: { text: string; applets: readonly string[] };
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
  for (const applet of input.network?.applets ?? []) {
    const dirs = ['sbin', 'bin', 'usr/sbin', 'usr/bin'];
    if (!(await Promise.all(dirs.map((d) => exists(join(input.installTree, d, applet))))).some(Boolean)) {
      throw new InputError(`the busybox build has no ${applet} applet, which /etc/rc.d/rcS needs for guest.network`, `enable CONFIG_${applet.toUpperCase()} in the busybox configuration, or set guest.network: none`);
    }
  }
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
  if (input.network !== undefined) {
    const dest = await clearForFile(staging, NETWORK_FILE, 'the network settings');
    await writeFile(dest, input.network.text, { flag: 'wx' });
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

// ---------------------------------------------------------------------------------------------

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
