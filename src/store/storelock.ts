// Lock files: the publish lock of a shared store (`<store>/.domu-publish.lock`) and the lock of a
// run's output directory (`out/.domu.lock`). The publish lock of a shared store holds JSON
// `{host, pid, started, command}`. Created atomically: the JSON is written and fsynced under a
// temporary name, then link()ed to the lock name, which fails with EEXIST while someone holds it
// (so the lock file is never seen half-written, and link() is atomic on every file system the
// store may be on). A second publisher polls with backoff up to its time-out.
//
// A lock left by a process that no longer runs on THIS host (same hostname, dead pid) is taken
// over with a warning. The takeover replaces the stale file by rename() (no moment without a
// lock) under a short takeover mutex, so that two publishers of this host that both saw the
// stale lock cannot both take it. A lock of another host is never broken: we cannot know whether
// that host is still writing.
import { hostname } from 'node:os';
import { link, mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { tempPathFor } from '../core/atomic.js';
import { abortError, DomuError } from '../core/errors.js';
import type { Logger } from '../core/log.js';

export const LOCK_NAME = '.domu-publish.lock';
const TAKEOVER_SUFFIX = '.takeover';

export interface LockHolder {
  host: string;
  pid: number;
  /** ISO time the holder took the lock. */
  started: string;
  command: string;
}

export interface StoreLockOptions {
  /** Give up after waiting this long for another holder. */
  timeoutMs: number;
  log: Logger;
  signal?: AbortSignal;
  /** What the holder is doing, shown to whoever waits (default: this process's argv). */
  command?: string;
}

export function lockPath(store: string): string {
  return join(store, LOCK_NAME);
}

/** Which lock: its file name in the directory and how messages speak of it. */
export interface LockKind {
  file: string;
  /** "store": "the store lock …", "the store is locked by …". */
  noun: string;
  /** What holders do, for "wait for that publish" / "nothing publishes there". */
  activity: string;
  activityVerb: string;
  /**
   * Make the directory when it is missing (before every attempt: a run that made --out only for
   * its lock removes it again when it leaves it empty, while another run waits for the lock).
   */
  createDir?: boolean;
}

export const STORE_LOCK: LockKind = { file: LOCK_NAME, noun: 'store', activity: 'publish', activityVerb: 'publishes' };
/** The output directory of a run (`out/.domu.lock`): one build, configs, verify or release at a time. */
export const OUT_LOCK: LockKind = { file: '.domu.lock', noun: 'output directory', activity: 'domu run', activityVerb: 'runs domu', createDir: true };

/** fsync a directory, so that the names created, renamed or removed in it are on disk. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Write `data` to a new file `path` (which must not exist) and fsync it. */
export async function writeNewFileDurable(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const fh = await open(path, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export function describeHolder(h: LockHolder): string {
  return `host ${h.host} pid ${h.pid} (since ${h.started}, ${JSON.stringify(h.command)})`;
}

interface SeenLock {
  /** undefined when the file is not our JSON. */
  holder: LockHolder | undefined;
  ino: number;
}

function parseHolder(text: string): LockHolder | undefined {
  try {
    const v = JSON.parse(text) as Partial<LockHolder>;
    if (typeof v.host === 'string' && Number.isInteger(v.pid) && typeof v.started === 'string') {
      return { host: v.host, pid: v.pid!, started: v.started, command: typeof v.command === 'string' ? v.command : '' };
    }
  } catch {
    /* not ours */
  }
  return undefined;
}

/** The lock file's holder and inode; undefined when there is no lock file. */
async function readLock(path: string): Promise<SeenLock | undefined> {
  try {
    const [st, text] = await Promise.all([stat(path), readFile(path, 'utf8')]);
    return { holder: parseHolder(text), ino: st.ino };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

function sameHolder(a: LockHolder, b: LockHolder): boolean {
  return a.host === b.host && a.pid === b.pid && a.started === b.started;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Held by a process of this host that no longer runs. */
function staleHere(h: LockHolder | undefined): h is LockHolder {
  return h !== undefined && h.host === hostname() && h.pid !== process.pid && !pidAlive(h.pid);
}

/** Create `path` holding `me`, atomically; false when it exists already. */
async function createExclusive(path: string, me: LockHolder): Promise<boolean> {
  const tmp = tempPathFor(path);
  try {
    await writeNewFileDurable(tmp, `${JSON.stringify(me)}\n`);
    try {
      await link(tmp, path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    }
  } finally {
    await rm(tmp, { force: true });
  }
  return true;
}

/**
 * Replace the stale lock `seen` by ours. Under the takeover mutex, and only when the lock file is
 * still the one judged stale (same inode, same holder). True when we hold the lock now.
 */
async function takeOver(path: string, seen: SeenLock & { holder: LockHolder }, me: LockHolder): Promise<boolean> {
  const mutex = `${path}${TAKEOVER_SUFFIX}`;
  if (!(await createExclusive(mutex, me))) {
    // Another publisher of this host is taking over; its mutex is stale only if it died doing so.
    const other = await readLock(mutex);
    if (staleHere(other?.holder)) await rm(mutex, { force: true });
    return false;
  }
  try {
    const now = await readLock(path);
    if (!now?.holder || now.ino !== seen.ino || !sameHolder(now.holder, seen.holder)) return false;
    const tmp = tempPathFor(path);
    try {
      await writeNewFileDurable(tmp, `${JSON.stringify(me)}\n`);
      await rename(tmp, path);
    } finally {
      await rm(tmp, { force: true });
    }
    return true;
  } finally {
    await rm(mutex, { force: true });
  }
}

function formatWait(ms: number): string {
  return ms >= 3600_000 ? `${(ms / 3600_000).toFixed(ms % 3600_000 ? 1 : 0)} h` : `${(ms / 1000).toFixed(1)} s`;
}

function timeoutError(kind: LockKind, path: string, seen: SeenLock, waitedMs: number): DomuError {
  const after = `gave up after ${(waitedMs / 1000).toFixed(1)} s`;
  const h = seen.holder;
  if (!h) {
    return new DomuError(`the ${kind.noun} lock ${path} is held but is not domu's lock JSON; ${after}; if no ${kind.activity} is running on any host, remove ${path} by hand`);
  }
  const held = `the ${kind.noun} is locked by ${describeHolder(h)}; ${after}`;
  if (h.host !== hostname()) {
    return new DomuError(`${held}; a lock of another host is never broken automatically: wait for that ${kind.activity}, or if ${h.host} is down and nothing ${kind.activityVerb} there, remove ${path} by hand`);
  }
  return new DomuError(`${held}; that process still runs on this host: wait for it to finish (or stop pid ${h.pid}) and try again`);
}

/**
 * Take the publish lock of `store`, waiting up to `timeoutMs` for another holder. Returns the
 * release function (idempotent; it removes the lock only while it is still ours).
 */
export async function acquireStoreLock(store: string, opts: StoreLockOptions): Promise<() => Promise<void>> {
  return acquireLock(store, STORE_LOCK, opts);
}

/** Take the lock `kind` of `dir` (see acquireStoreLock). */
export async function acquireLock(dir: string, kind: LockKind, opts: StoreLockOptions): Promise<() => Promise<void>> {
  const path = join(dir, kind.file);
  const me: LockHolder = {
    host: hostname(),
    pid: process.pid,
    started: new Date().toISOString(),
    command: opts.command ?? process.argv.slice(1).join(' '),
  };
  const begun = performance.now();
  let delay = 50;
  let announced = false;
  for (;;) {
    if (opts.signal?.aborted) throw abortError(opts.signal);
    if (kind.createDir) await mkdir(dir, { recursive: true });
    if (await createExclusive(path, me)) break;
    const seen = await readLock(path);
    if (!seen) {
      // Released between our two calls: try again at once (but not forever, if link() keeps
      // failing with EEXIST while nothing is readable there).
      if (performance.now() - begun < opts.timeoutMs) continue;
      throw new DomuError(`cannot take the ${kind.noun} lock ${path}: it exists but cannot be read; remove it by hand if no ${kind.activity} is running`);
    }
    if (staleHere(seen.holder)) {
      if (await takeOver(path, { ...seen, holder: seen.holder }, me)) {
        opts.log.warn(`took over the ${kind.noun} lock ${path} from ${describeHolder(seen.holder)}: that process no longer runs on this host (a ${kind.activity} that was killed?)`);
        break;
      }
    } else if (!announced) {
      announced = true;
      const who = seen.holder ? describeHolder(seen.holder) : 'an unreadable lock file';
      opts.log.info(`waiting for the ${kind.noun} lock ${path}, held by ${who}; waiting up to ${formatWait(opts.timeoutMs)}`);
    }
    const waited = performance.now() - begun;
    if (waited >= opts.timeoutMs) throw timeoutError(kind, path, seen, waited);
    try {
      await sleep(Math.min(delay, opts.timeoutMs - waited), undefined, opts.signal ? { signal: opts.signal } : undefined);
    } catch (e) {
      if (opts.signal?.aborted) throw abortError(opts.signal);
      throw e;
    }
    delay = Math.min(delay * 1.6, 1000);
  }
  await fsyncDir(dir);
  opts.log.debug(`${kind.noun} lock ${path} taken after ${Math.round(performance.now() - begun)} ms`);
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    const seen = await readLock(path);
    if (seen?.holder && sameHolder(seen.holder, me)) {
      await rm(path, { force: true });
      await fsyncDir(dir);
    } else {
      opts.log.warn(`the ${kind.noun} lock ${path} is no longer ours (${seen?.holder ? `held by ${describeHolder(seen.holder)}` : 'gone'}); left alone`);
    }
  };
}
