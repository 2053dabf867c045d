// Describe a directory tree (paths, types, modes, content hashes, symlink targets) and diff two
// descriptions: used to compare our extraction with `tar xjf`, and js with native.
import { createHash } from 'node:crypto';
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';

export type TreeEntryType = 'file' | 'dir' | 'symlink' | 'other';

export interface TreeEntry {
  /** Relative to the described directory, `/`-separated; the directory itself is not listed. */
  path: string;
  type: TreeEntryType;
  /** Permission bits and setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  /** Files only. */
  size?: number;
  /** Files only. */
  sha256?: string;
  /** Symlinks only, verbatim. */
  target?: string;
  /** Whole seconds; only with `{ mtimes: true }`. */
  mtime?: number;
  /** Files only, with `{ mtimes: true }`: hard link count. */
  nlink?: number;
}

export interface DescribeOptions {
  /** Also record mtimes (whole seconds) and link counts. */
  mtimes?: boolean;
}

export async function describeTree(dir: string, opts: DescribeOptions = {}): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  async function walk(rel: string): Promise<void> {
    const names = await readdir(rel ? join(dir, rel) : dir);
    for (const name of names) {
      const path = rel ? `${rel}/${name}` : name;
      const abs = join(dir, path);
      const st = await lstat(abs);
      const e: TreeEntry = { path, type: 'other', mode: st.mode & 0o7777 };
      if (st.isDirectory()) e.type = 'dir';
      else if (st.isSymbolicLink()) {
        e.type = 'symlink';
        e.target = await readlink(abs);
      } else if (st.isFile()) {
        e.type = 'file';
        e.size = st.size;
        e.sha256 = createHash('sha256').update(await readFile(abs)).digest('hex');
        if (opts.mtimes) e.nlink = st.nlink;
      }
      if (opts.mtimes) e.mtime = Math.floor(st.mtimeMs / 1000);
      out.push(e);
      if (e.type === 'dir') await walk(path);
    }
  }
  await walk('');
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

export interface DiffOptions {
  /** Fields not compared. */
  ignore?: (keyof Omit<TreeEntry, 'path'>)[];
  /** At most this many differences are listed (default 50). */
  limit?: number;
}

/** Human-readable differences between two descriptions; empty when they are the same. */
export function diffTrees(a: TreeEntry[], b: TreeEntry[], opts: DiffOptions = {}): string[] {
  const limit = opts.limit ?? 50;
  const ignore = new Set<string>(opts.ignore ?? []);
  const diffs: string[] = [];
  const mb = new Map(b.map((e) => [e.path, e]));
  const ma = new Map(a.map((e) => [e.path, e]));
  const fields = ['type', 'mode', 'size', 'sha256', 'target', 'mtime', 'nlink'] as const;
  for (const ea of a) {
    const eb = mb.get(ea.path);
    if (!eb) {
      diffs.push(`only in first: ${ea.path} (${ea.type})`);
      continue;
    }
    for (const f of fields) {
      if (ignore.has(f)) continue;
      const va = ea[f];
      const vb = eb[f];
      if (va !== vb) diffs.push(`${ea.path}: ${f} ${show(f, va)} != ${show(f, vb)}`);
    }
  }
  for (const eb of b) if (!ma.has(eb.path)) diffs.push(`only in second: ${eb.path} (${eb.type})`);
  return diffs.length > limit ? [...diffs.slice(0, limit), `… and ${diffs.length - limit} more`] : diffs;
}

function show(field: string, v: unknown): string {
  if (v === undefined) return '-';
  if (field === 'mode' && typeof v === 'number') return `0${v.toString(8)}`;
  return JSON.stringify(v);
}
