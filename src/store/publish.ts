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
// - store.disk lun: the image goes onto the guest's LUN instead (publish-lun.ts: refused before
//   anything is written when the device is missing, too small or in use; written after the other
//   files are staged and before they are renamed into place).
// The steps: checkStore (store-check.ts), readSources / checkAgainstStore / refuseEdited
// (publish-items.ts), then, under the lock, the space check, the copies (sparse, ../fs/sparse.ts)
// and the renames here.
import { link, mkdir, open, readdir, rename, rm, rmdir, stat, statfs } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { StageContext } from '../core/context.js';
import { isTempName, tempPathFor, TEMP_MARK } from '../core/atomic.js';
import { abortError, DomuError, errorMessage, InputError } from '../core/errors.js';
import { BLOCK, CHUNK, dataOf, writeNonZero } from '../fs/sparse.js';
import { checkStore } from './store-check.js';
import { checkAgainstStore, readSources, refuseEdited, type Item, type PublishInput } from './publish-items.js';
import { FileTooBigError, findNoSpace, findTooBig, NoSpaceError, noSpaceError, tooBigError } from '../core/stage-errors.js';
import { faultPoint } from '../core/fault.js';
import { acquireStoreLock, fsyncDir, LOCK_NAME, lockPath } from './storelock.js';
import { openLun, writeLun, type LunPublishOutput } from './publish-lun.js';

export type { PublishInput };
export type { LunPublishOutput, LunTarget } from './publish-lun.js';

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
  /** store.disk lun: the image went onto this device instead of into the store. */
  lun?: LunPublishOutput;
}

/** Points where tests step in (pause, get killed). Not for production callers. */
export interface PublishHooks {
  /** Once the store lock is held, before the store is read or written. */
  afterLock?(): Promise<void> | void;
  /** After each chunk a copy has written into its temporary file in the store. */
  afterChunk?(rel: string, bytesDone: number): Promise<void> | void;
}

export async function publish(input: PublishInput, ctx: StageContext, hooks: PublishHooks = {}): Promise<PublishOutput> {
  const store = await checkStore(input.store, input.allowUnmounted ?? false);
  const outDir = resolve(input.outDir);
  const items = await readSources(outDir, store, input);
  const lunImage = input.lun ? await lunSource(outDir, input.lun.image) : undefined;
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
    // store.disk lun: every refusal of the device (missing, too small, in use) before anything is written.
    const lun = input.lun && lunImage ? await openLun(input.lun.target, lunImage.size, ctx) : undefined;
    try {
      const out: PublishOutput = { written: [], unchanged: items.filter((i) => i.action === 'unchanged').map((i) => i.rel), backups: [], lockWaitMs };
      // All new content goes to temporary names first (a full store fails here, with the store
      // and the LUN unchanged); then the image onto the LUN (store.disk lun), then each file is
      // renamed into place, in order (image, other files, configs).
      const staged = await stageItems(items.filter((i) => i.action === 'write'), store, ctx, temps, hooks);
      if (lun && lunImage) out.lun = await writeLun(lunImage.path, lunImage.size, lun, input.lun!.target, ctx, (done) => hooks.afterChunk?.(input.lun!.image, done));
      for (const s of staged) {
        if (ctx.signal.aborted) throw abortError(ctx.signal);
        await commitItem(s.item, s.tmp, ctx, temps, out);
      }
      const onto = out.lun ? `; image onto ${out.lun.device}: ${out.lun.bytesWritten} bytes written, ${out.lun.bytesChecked} checked` : '';
      ctx.log.info(`published to ${store}: ${out.written.length} written, ${out.unchanged.length} unchanged${out.backups.length ? `, ${out.backups.length} kept as .bak` : ''}${onto}`);
      return out;
    } finally {
      await lun?.fh.close();
    }
  } catch (e) {
    await temps.removeAll();
    if (ctx.signal.aborted) throw abortError(ctx.signal);
    if (e instanceof NoSpaceError || e instanceof FileTooBigError) throw e;
    const full = findNoSpace(e);
    if (full) throw noSpaceError({ code: full.code, dir: store, role: 'store', doing: 'publishing to the store', cause: e });
    if (findTooBig(e)) throw tooBigError({ dir: store, role: 'store', doing: 'publishing to the store', note: 'the store is unchanged', cause: e });
    throw e;
  } finally {
    await release().catch((e: unknown) => ctx.log.warn(`could not release the store lock of ${store}: ${errorMessage(e)}; remove ${join(store, LOCK_NAME)} by hand`));
    dropLock();
  }
}

/** The image to write onto the LUN, in --out. */
async function lunSource(outDir: string, rel: string): Promise<{ path: string; size: number }> {
  const path = join(outDir, rel);
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) throw new InputError(`${rel} is not a file in ${outDir}; build it first (domu build)`);
  return { path, size: st.size };
}

// ---------------------------------------------------------------------------------------------
// The store

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
    // A file the store's file system cannot hold (EFBIG; the image, as big as image.size).
    if (findTooBig(e)) {
      const item = staged[staged.length - 1]?.item;
      throw tooBigError({ dir: store, role: 'store', doing: `publishing ${item ? item.rel : 'to the store'}`, size: item?.size, note: 'the store is unchanged', cause: e });
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
