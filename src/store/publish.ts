// Publish the built store-shaped tree (`out/`) into the shared store without ever destroying what
// is there:
// - the store must be a writable directory and (unless allowed otherwise) a mount point, checked
//   before anything is written: an unmounted /scsistore is an empty directory of the root fs;
// - one publisher at a time, under the store lock (storelock.ts);
// - every file that would be replaced is checked first: a generated file edited by hand (its
//   header hash no longer matches), or a file without our header where we write a generated one,
//   refuses the whole publish (nothing written) unless `force`, which keeps it as `<file>.bak`;
// - identical files are left alone (no write, no mtime change);
// - each file is copied to a temporary name beside its target and fsynced; only when ALL are
//   copied is each renamed into place and its directory fsynced: a store that fills up during a
//   copy (the free-space check passed, another writer took the space) leaves the store as it was,
//   and a crash leaves the complete old or the complete new file, and only `.tmp-*` names, which
//   the next publish sweeps (under the lock, so they are nobody's);
// - the image is never truncated or rewritten in place (a running domain may hold it open): the
//   new one is copied sparse to a temporary name, the current one is kept as `<image>.prev`
//   (hard link, so `<image>` never disappears), then the new one is renamed over `<image>`;
// - order: the image, then the other non-generated files (kernel, ramdisk), the generated
//   configs last, so that a config never names a file that is not there yet.
import { constants } from 'node:fs';
import { access, type FileHandle, link, lstat, mkdir, open, readdir, readFile, realpath, rename, rm, rmdir, stat, statfs } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize, resolve, sep } from 'node:path';
import type { StageContext } from '../core/context.js';
import { isTempName, tempPathFor, TEMP_MARK } from '../core/atomic.js';
import { dataRanges } from '../fs/e2fs.js';
import { abortError, DomuError, errorMessage, InputError } from '../core/errors.js';
import { checkHeader } from './genheader.js';
import { findNoSpace, NoSpaceError, noSpaceError } from '../core/stage-errors.js';
import { faultPoint } from '../core/fault.js';
import { isMountPoint as isListedMount } from '../core/mounts.js';
import { acquireStoreLock, fsyncDir, LOCK_NAME, lockPath, writeNewFileDurable } from './storelock.js';

export interface PublishInput {
  /** The built store-shaped tree. */
  outDir: string;
  /** store.path */
  store: string;
  /** Paths relative to outDir (and to the store) to publish. */
  files: string[];
  /** Relative path of the guest image (published even if not among `files`). */
  image?: string;
  /** Overwrite hand-edited generated files (and files without our header), keeping `<file>.bak`. */
  force?: boolean;
  /** The store need not be a mount point (tests, local stores). */
  allowUnmounted?: boolean;
  lockTimeoutMs: number;
  /** Shown to a publisher waiting for our lock (default: this process's command line). */
  command?: string;
}

export interface PublishOutput {
  /** Relative paths written (in the order written). */
  written: string[];
  /** Relative paths whose store copy was identical and was left alone. */
  unchanged: string[];
  /** Relative paths of the `.bak` copies kept (force). */
  backups: string[];
  /** Relative path of the previous image kept (`<image>.prev`), when the image was replaced. */
  previousImage?: string;
  /** How long taking the store lock took. */
  lockWaitMs: number;
}

/** Points where tests step in (pause, get killed). Not for production callers. */
export interface PublishHooks {
  /** Once the store lock is held, before the store is read or written. */
  afterLock?(): Promise<void> | void;
  /** After each chunk a copy has written into its temporary file in the store. */
  afterChunk?(rel: string, bytesDone: number): Promise<void> | void;
}

type Kind = 'image' | 'file' | 'generated';

interface Item {
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
const MAX_TEXT = 4 << 20;
const CHUNK = 4 << 20;
const BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

export async function publish(input: PublishInput, ctx: StageContext, hooks: PublishHooks = {}): Promise<PublishOutput> {
  const store = await checkStore(input.store, input.allowUnmounted ?? false);
  const outDir = resolve(input.outDir);
  const items = await readSources(outDir, store, input);
  const started = performance.now();
  const release = await acquireStoreLock(store, { timeoutMs: input.lockTimeoutMs, log: ctx.log, signal: ctx.signal, ...(input.command === undefined ? {} : { command: input.command }) });
  const lockWaitMs = Math.round(performance.now() - started);
  const dropLock = ctx.cleanup.push(`release the store lock of ${store}`, release, { kind: 'lock', path: lockPath(store) });
  const temps = new Temps(ctx);
  try {
    await hooks.afterLock?.();
    await sweepLeftovers(store, items, ctx);
    await checkAgainstStore(items, ctx);
    refuseEdited(items, store, input.force ?? false);
    await checkSpace(store, items);
    const out: PublishOutput = { written: [], unchanged: items.filter((i) => i.action === 'unchanged').map((i) => i.rel), backups: [], lockWaitMs };
    // All new content goes to temporary names first (a full store fails here, with the store
    // unchanged); then each is renamed into place, in order (image, other files, configs).
    const staged = await stageItems(items.filter((i) => i.action === 'write'), store, ctx, temps, hooks);
    for (const s of staged) {
      if (ctx.signal.aborted) throw abortError(ctx.signal);
      await commitItem(s.item, s.tmp, ctx, temps, out);
    }
    ctx.log.info(`published to ${store}: ${out.written.length} written, ${out.unchanged.length} unchanged${out.backups.length ? `, ${out.backups.length} kept as .bak` : ''}`);
    return out;
  } catch (e) {
    await temps.removeAll();
    if (ctx.signal.aborted) throw abortError(ctx.signal);
    const full = e instanceof NoSpaceError ? undefined : findNoSpace(e);
    throw full ? noSpaceError({ code: full.code, dir: store, role: 'store', doing: 'publishing to the store', cause: e }) : e;
  } finally {
    await release().catch((e: unknown) => ctx.log.warn(`could not release the store lock of ${store}: ${errorMessage(e)}; remove ${join(store, LOCK_NAME)} by hand`));
    dropLock();
  }
}

// ---------------------------------------------------------------------------------------------
// The store

/** Directories of the Dom0's own system that are never the shared store. */
const SYSTEM_DIRS = new Set(['/', '/bin', '/boot', '/dev', '/dev/shm', '/etc', '/lib', '/lib32', '/lib64', '/proc', '/run', '/sbin', '/sys', '/usr', '/var']);

/** The store is a writable directory and (unless allowed otherwise) a mount point; its real path. */
export async function checkStore(given: string, allowUnmounted: boolean): Promise<string> {
  const path = resolve(given);
  const st = await stat(path).catch(() => undefined);
  if (!st?.isDirectory()) {
    throw new InputError(`the store ${path} is not a directory${st ? '' : ' (it does not exist)'}`, 'mount the store there, or set store.path to where it is mounted');
  }
  const real = await realpath(path);
  // These are mount points (so the check below passes) but never the shared store: publishing
  // there would put boot/, xen/ and the image into the Dom0's own system (e.g. --store /).
  if (SYSTEM_DIRS.has(real)) {
    throw new InputError(
      `the store ${path}${real === path ? '' : ` (${real})`} is a system directory of this host, not the shared store; nothing was written`,
      'mount the store at its own directory (store.path, e.g. /scsistore) and publish there',
    );
  }
  if (!allowUnmounted && !(await isMountPoint(real))) {
    throw new InputError(
      `the store ${path} is not a mount point: the shared store does not seem to be mounted there, and publishing would write into the directory below it`,
      'mount the store (e.g. the iSCSI LUN) there first, or pass --allow-unmounted for a local store',
    );
  }
  const probe = tempPathFor(join(real, '.domu-probe'));
  try {
    await access(real, constants.W_OK);
    await writeNewFileDurable(probe, 'probe\n');
  } catch (e) {
    const full = findNoSpace(e); // writable, but full: not the user's mount options
    if (full) throw noSpaceError({ code: full.code, dir: path, role: 'store', doing: 'checking that the store is writable', note: 'nothing was written', cause: e });
    throw new InputError(`the store ${path} is not writable (${fsReason(e)})`, 'mount it read-write (mount -o remount,rw), or publish as a user who may write there');
  } finally {
    await rm(probe, { force: true }).catch(() => undefined);
  }
  // domu's lock is always a regular file (storelock.ts); a symlink there would be followed when
  // the lock is read (a file outside the store), and a dangling one looks like no lock at all.
  const lock = lockPath(real);
  if ((await lstat(lock).catch(() => undefined))?.isSymbolicLink()) {
    const to = await realpath(lock).catch(() => undefined);
    throw new InputError(
      `the store lock ${lock} is a symbolic link (to ${to ?? 'nowhere'}), not domu's lock file; nothing was written`,
      `if no publish is running on any host, remove ${lock} by hand and publish again`,
    );
  }
  return real;
}

function fsReason(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'EROFS') return 'read-only file system';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  return errorMessage(e);
}

/** A different device than its parent, or listed in /proc/self/mountinfo (bind mounts). */
async function isMountPoint(dir: string): Promise<boolean> {
  if (dir === '/') return true;
  const [a, b] = await Promise.all([stat(dir), stat(dirname(dir))]);
  if (a.dev !== b.dev) return true;
  return isListedMount(dir);
}

/** Room for every temporary copy at once (they all exist before the first rename), checked before writing. */
async function checkSpace(store: string, items: Item[]): Promise<void> {
  const writes = items.filter((i) => i.action === 'write');
  // Each file's allocation, plus a block for each file's directory entry and the .prev/.bak links.
  const need = writes.reduce((n, i) => n + i.allocated + BLOCK, 0);
  const fs = await statfs(store);
  const free = fs.bavail * fs.bsize;
  if (need > free) {
    throw noSpaceError({ dir: store, role: 'store', doing: `publishing ${writes.length} file${writes.length === 1 ? '' : 's'} to the store`, need, note: 'nothing was written' });
  }
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}

/**
 * Remove the temporaries a killed publisher left in the directories we publish into. We hold the
 * lock, so they are nobody's; only the lock's own temporaries may belong to a waiting publisher.
 */
async function sweepLeftovers(store: string, items: Item[], ctx: StageContext): Promise<void> {
  const dirs = new Set([store, ...items.map((i) => dirname(i.dst))]);
  for (const dir of dirs) {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const n of names) {
      if (!isTempName(n) || n.startsWith(`${TEMP_MARK}${LOCK_NAME}`)) continue;
      ctx.log.info(`removing ${join(dir, n)}, left by an interrupted publish`);
      await rm(join(dir, n), { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// What to publish, and what is on the store

function checkRel(rel: string): string {
  const n = normalize(rel);
  if (!rel || isAbsolute(rel) || n === '.' || n.split(sep).includes('..') || isTempName(n.split(sep).pop()!) || n === LOCK_NAME) {
    throw new InputError(`cannot publish ${JSON.stringify(rel)}: not a plain path inside the store`);
  }
  return n;
}

async function readSources(outDir: string, store: string, input: PublishInput): Promise<Item[]> {
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

async function checkAgainstStore(items: Item[], ctx: StageContext): Promise<void> {
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
function refuseEdited(items: Item[], store: string, force: boolean): void {
  const edited = items.filter((i) => i.backup);
  if (edited.length === 0 || force) return;
  const list = edited.map((i) => i.rel).join(', ');
  throw new InputError(
    `refusing to publish to ${store}: ${edited.length} file${edited.length === 1 ? '' : 's'} there ${edited.length === 1 ? 'was' : 'were'} edited or made by hand: ${list}; nothing was written`,
    'carry the changes into the description or templates, or publish with --force to keep each as <file>.bak and write the new one',
  );
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Temporary names in the store: registered with the run's cleanup, removed on failure. */
class Temps {
  private readonly live = new Map<string, () => void>();
  constructor(private readonly ctx: StageContext) {}

  /** A fresh temporary name beside `target`, registered before it exists. */
  create(target: string): string {
    const tmp = tempPathFor(target);
    this.live.set(tmp, this.ctx.cleanup.tempPath(tmp));
    return tmp;
  }

  /** The temporary was renamed into place. */
  done(tmp: string): void {
    this.live.get(tmp)?.();
    this.live.delete(tmp);
  }

  async removeAll(): Promise<void> {
    for (const [tmp, drop] of this.live) {
      await rm(tmp, { force: true }).catch((e: unknown) => this.ctx.log.warn(`could not remove ${tmp}: ${errorMessage(e)}`));
      drop();
    }
    this.live.clear();
  }
}

/**
 * Copy every item to a temporary name beside its target (registered before it exists). On any
 * failure (a store that fills up: another writer took the space after the check) every copy and
 * every directory made here is removed again: the store is as it was.
 */
async function stageItems(items: Item[], store: string, ctx: StageContext, temps: Temps, hooks: PublishHooks): Promise<{ item: Item; tmp: string }[]> {
  const made: string[] = [];
  const staged: { item: Item; tmp: string }[] = [];
  try {
    for (const item of items) {
      if (ctx.signal.aborted) throw abortError(ctx.signal);
      made.push(...(await makeDirs(dirname(item.dst))));
      const tmp = temps.create(item.dst);
      staged.push({ item, tmp });
      await copySparse(item, tmp, ctx, hooks);
    }
  } catch (e) {
    await temps.removeAll();
    for (const d of made.reverse()) await rmdir(d).catch(() => undefined);
    if (ctx.signal.aborted) throw abortError(ctx.signal);
    const full = findNoSpace(e);
    if (full) {
      const need = items.reduce((n, i) => n + i.allocated, 0);
      throw noSpaceError({ code: full.code, dir: store, role: 'store', doing: `publishing ${items.length} file${items.length === 1 ? '' : 's'} to the store`, need, note: 'the store is unchanged', cause: e });
    }
    throw e;
  }
  return staged;
}

/** Put a staged copy into place: the .bak or .prev link first, then the rename. */
async function commitItem(item: Item, tmp: string, ctx: StageContext, temps: Temps, out: PublishOutput): Promise<void> {
  const dir = dirname(item.dst);
  if (item.backup && item.exists) {
    await keepAs(item.dst, `${item.dst}.bak`, temps);
    out.backups.push(`${item.rel}.bak`);
    ctx.log.warn(`${item.rel} on the store was edited or made by hand; kept as ${item.rel}.bak`);
  }
  if (item.kind === 'image' && item.exists) {
    await keepAs(item.dst, `${item.dst}.prev`, temps);
    out.previousImage = `${item.rel}.prev`;
  }
  await rename(tmp, item.dst);
  temps.done(tmp);
  await fsyncDir(dir);
  out.written.push(item.rel);
  ctx.log.info(`published ${item.rel}`);
}

/** mkdir -p, fsyncing the parent of every directory created; returns those created, parents first. */
async function makeDirs(dir: string): Promise<string[]> {
  const first = await mkdir(dir, { recursive: true });
  if (first === undefined) return [];
  const created: string[] = [];
  for (let d = dir; ; d = dirname(d)) {
    created.unshift(d);
    await fsyncDir(dirname(d));
    if (d === first) break;
  }
  return created;
}

/** `as` becomes a second name of `path`'s current file (replacing an older `as`) atomically. */
async function keepAs(path: string, as: string, temps: Temps): Promise<void> {
  const tmp = temps.create(as);
  await link(path, tmp);
  await rename(tmp, as);
  temps.done(tmp);
  await fsyncDir(dirname(as));
}

/** Where `path` (of `size` bytes) has data: its FIEMAP extents when it has holes, else all of it. */
async function dataOf(ctx: StageContext, path: string, size: number): Promise<[number, number][]> {
  const st = await stat(path);
  const ranges = st.blocks * 512 < size ? await dataRanges(ctx, path, size) : undefined;
  return ranges ?? (size > 0 ? [[0, size]] : []);
}

/**
 * Whether two files of `size` bytes have the same content. Only where either has data is read:
 * elsewhere both are holes, hence zeros (a 1 GiB image with 35 MB of data costs 35 MB, not 1 GiB).
 */
async function sameContent(ctx: StageContext, a: string, b: string, size: number): Promise<boolean> {
  const all = [...(await dataOf(ctx, a, size)), ...(await dataOf(ctx, b, size))].sort((x, y) => x[0] - y[0]);
  const ranges: [number, number][] = [];
  for (const [s, e] of all) {
    const last = ranges[ranges.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else ranges.push([s, e]);
  }
  const [fa, fb] = [await open(a, 'r'), await open(b, 'r')];
  try {
    const [ba, bb] = [Buffer.alloc(CHUNK), Buffer.alloc(CHUNK)];
    for (const [start, end] of ranges) {
      for (let pos = start; pos < end; pos += CHUNK) {
        const n = Math.min(CHUNK, end - pos);
        const [ra, rb] = await Promise.all([fa.read(ba, 0, n, pos), fb.read(bb, 0, n, pos)]);
        if (ra.bytesRead !== n || rb.bytesRead !== n || !ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
        if (ctx.signal.aborted) throw abortError(ctx.signal);
      }
    }
    return true;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

/**
 * Copy `item.src` to the new file `dst` keeping holes: only the source's data ranges (FIEMAP,
 * through filefrag) are read, and all-zero 4 KiB blocks in them are not written; then fsync.
 */
async function copySparse(item: Item, dst: string, ctx: StageContext, hooks: PublishHooks): Promise<void> {
  const ranges = await dataOf(ctx, item.src, item.size);
  const total = ranges.reduce((n, [s, e]) => n + e - s, 0);
  const buf = Buffer.alloc(CHUNK);
  const from = await open(item.src, 'r');
  try {
    const to = await open(dst, 'wx', item.mode);
    try {
      let done = 0;
      for (const [start, end] of ranges) {
        for (let pos = start; pos < end; ) {
          const { bytesRead } = await from.read(buf, 0, Math.min(CHUNK, end - pos), pos);
          if (bytesRead === 0) throw new DomuError(`${item.src} changed while it was being published (shorter than ${end} bytes); build again`);
          await writeNonZero(to, buf.subarray(0, bytesRead), pos);
          pos += bytesRead;
          done += bytesRead;
          ctx.progress(`${item.rel}: ${mib(done)} / ${mib(total)}`);
          await hooks.afterChunk?.(item.rel, done);
          await faultPoint(`publish:${item.rel}`, ctx.signal);
          if (ctx.signal.aborted) throw abortError(ctx.signal);
        }
      }
      await to.truncate(item.size);
      await to.sync();
    } finally {
      await to.close();
    }
  } finally {
    await from.close();
  }
}

/** Write the runs of `data` that are not all-zero 4 KiB blocks, at file offset `pos`. */
async function writeNonZero(fh: FileHandle, data: Buffer, pos: number): Promise<void> {
  const put = async (from: number, to: number) => {
    for (let off = from; off < to; ) off += (await fh.write(data, off, to - off, pos + off)).bytesWritten;
  };
  let runStart = -1;
  for (let off = 0; off < data.length; off += BLOCK) {
    const end = Math.min(off + BLOCK, data.length);
    const zero = data.subarray(off, end).equals(ZERO_BLOCK.subarray(0, end - off));
    if (!zero && runStart < 0) runStart = off;
    else if (zero && runStart >= 0) {
      await put(runStart, off);
      runStart = -1;
    }
  }
  if (runStart >= 0) await put(runStart, data.length);
}
