// What a publish writes, and what is on the store where it goes (publish.ts): the files to publish
// read from out/ (generated ones known by their header), every directory on the way checked to be
// a real directory of the store, each store file compared (unchanged files are left alone), and a
// generated file edited by hand (or a file without our header) found before anything is written.
import { lstat, readFile, realpath, stat } from 'node:fs/promises';
import { isAbsolute, join, normalize, sep } from 'node:path';
import { isTempName } from '../core/atomic.js';
import type { StageContext } from '../core/context.js';
import { InputError } from '../core/errors.js';
import { sameContent } from '../fs/sparse.js';
import { checkHeader } from './genheader.js';
import { LOCK_NAME } from './storelock.js';
import type { LunTarget } from './publish-lun.js';

export interface PublishInput {
  /** The built store-shaped tree. */
  outDir: string;
  /** store.path */
  store: string;
  /** Paths relative to outDir (and to the store) to publish. */
  files: string[];
  /** Relative path of the guest image (published even if not among `files`). */
  image?: string;
  /** store.disk lun: the image (relative path in outDir) goes onto this LUN, not into the store. */
  lun?: { image: string; target: LunTarget };
  /** Overwrite hand-edited generated files (and files without our header), keeping `<file>.bak`. */
  force?: boolean;
  /** The store need not be a mount point (tests, local stores). */
  allowUnmounted?: boolean;
  lockTimeoutMs: number;
  /** Shown to a publisher waiting for our lock (default: this process's command line). */
  command?: string;
}

export type Kind = 'image' | 'file' | 'generated';

export interface Item {
  rel: string;
  src: string;
  dst: string;
  kind: Kind;
  size: number;
  /** Bytes the source occupies on disk: what the copy needs on the store. */
  allocated: number;
  mode: number;
  /** Content of a generated text file. */
  text?: Buffer;
  /** Filled by the store check. */
  action?: 'write' | 'unchanged';
  exists?: boolean;
  backup?: boolean;
}

/** Largest text file we read to look for a header. */
export const MAX_TEXT = 4 << 20;

function checkRel(rel: string): string {
  const n = normalize(rel);
  if (!rel || isAbsolute(rel) || n === '.' || n.split(sep).includes('..') || isTempName(n.split(sep).pop()!) || n === LOCK_NAME) {
    throw new InputError(`cannot publish ${JSON.stringify(rel)}: not a plain path inside the store`);
  }
  return n;
}

export async function readSources(outDir: string, store: string, input: PublishInput): Promise<Item[]> {
  const image = input.image === undefined ? undefined : checkRel(input.image);
  const rels = [...new Set([...(image ? [image] : []), ...input.files.map(checkRel)])];
  const items: Item[] = [];
  for (const rel of rels) {
    const src = join(outDir, rel);
    const st = await stat(src).catch(() => undefined);
    if (!st?.isFile()) throw new InputError(`${rel} is not a file in ${outDir}; build it first (domu build) or fix the list of files to publish`);
    const item: Item = { rel, src, dst: join(store, rel), kind: rel === image ? 'image' : 'file', size: st.size, allocated: st.blocks * 512, mode: st.mode & 0o7777 };
    if (item.kind === 'file' && st.size <= MAX_TEXT) {
      const text = await readFile(src);
      if (checkHeader(text.toString('utf8')).generated) Object.assign(item, { kind: 'generated', text });
    }
    items.push(item);
  }
  const rank: Record<Kind, number> = { image: 0, file: 1, generated: 2 };
  await checkStorePaths(items);
  return items.sort((a, b) => rank[a.kind] - rank[b.kind]);
}

/**
 * Every directory between the store and a file to publish must be a real directory of the store,
 * or not exist yet (it is then created as one): a symlink there (`<store>/xen -> /elsewhere`)
 * would make the publish write, and the sweep of leftovers delete, outside the store. The file
 * itself may be a symlink: it is replaced by rename, never written through.
 */
async function checkStorePaths(items: Item[]): Promise<void> {
  const checked = new Set<string>();
  for (const item of items) {
    const store = item.dst.slice(0, item.dst.length - item.rel.length - 1);
    let dir = store;
    for (const part of item.rel.split(sep).slice(0, -1)) {
      dir = join(dir, part);
      if (checked.has(dir)) continue;
      const st = await lstat(dir).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return undefined;
        throw e;
      });
      if (!st) break; // made by the publish, as a directory
      if (st.isSymbolicLink()) {
        const to = await realpath(dir).catch(() => undefined);
        const where = to === undefined ? 'a link to nowhere' : to === store || to.startsWith(`${store}${sep}`) ? `a link to ${to}` : `a link to ${to}, outside the store ${store}`;
        throw new InputError(
          `the store path ${dir} is ${where}: publish writes only into real directories of the store, never through a symbolic link; nothing was written`,
          `replace ${dir} by a real directory on the store (or remove the link), then publish again`,
        );
      }
      if (!st.isDirectory()) throw new InputError(`the store path ${dir} is not a directory, but ${item.rel} is to be published under it; nothing was written`, `move ${dir} away and publish again`);
      checked.add(dir);
    }
  }
}

export async function checkAgainstStore(items: Item[], ctx: StageContext): Promise<void> {
  await checkStorePaths(items); // again, under the lock
  for (const item of items) {
    const st = await lstat(item.dst).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    item.exists = st !== undefined;
    item.action = 'write';
    if (!st) continue;
    if (st.isDirectory()) throw new InputError(`${item.dst} is a directory where ${item.rel} is to be published; move it away and publish again`);
    if (!st.isFile()) {
      // A symlink or other special file: replaced; where a generated file goes, it is not ours.
      if (item.kind === 'generated') item.backup = true;
      continue;
    }
    if (item.kind === 'generated') {
      const old = st.size <= MAX_TEXT ? await readFile(item.dst) : undefined;
      if (old?.equals(item.text!)) item.action = 'unchanged';
      else if (!old || !checkHeader(old.toString('utf8')).intact) item.backup = true;
    } else if (st.size === item.size && (await sameContent(ctx, item.src, item.dst, item.size))) {
      item.action = 'unchanged';
    }
  }
}

/** A store file we would overwrite that was edited or made by hand: refuse unless forced. */
export function refuseEdited(items: Item[], store: string, force: boolean): void {
  const edited = items.filter((i) => i.backup);
  if (edited.length === 0 || force) return;
  const list = edited.map((i) => i.rel).join(', ');
  throw new InputError(
    `refusing to publish to ${store}: ${edited.length} file${edited.length === 1 ? '' : 's'} there ${edited.length === 1 ? 'was' : 'were'} edited or made by hand: ${list}; nothing was written`,
    'carry the changes into the description or templates, or publish with --force to keep each as <file>.bak and write the new one',
  );
}
