// The staging tree of the rootfs stage (rootfs.ts): written into without ever following a symlink
// (a directory is made one component at a time; a file replaces what was at its path instead of
// writing into it), and listed as hashed, in byte order.
import { chmod, lstat, mkdir, readdir, readlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../core/errors.js';
import { sha256File } from '../core/hash.js';

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

/** Byte-wise order (locale-independent), the same on every machine. */
export function compare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

export function kindOf(st: { isFIFO(): boolean; isSocket(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean }): string {
  if (st.isFIFO()) return 'a fifo';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'a special file';
}

/**
 * Make `rel` (relative to `root`) a directory, creating missing components (0755, or `mode` for the
 * last one) without following any symlink. An existing last component gets `mode` unless
 * keepExisting. `where` names the cause in errors.
 */
export async function ensureDir(root: string, rel: string, mode: number | undefined, where: string, opts: { keepExisting?: boolean } = {}): Promise<void> {
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
export async function clearForFile(root: string, rel: string, where: string): Promise<string> {
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
