// What a program said about itself (a compiler probe, a tool's version), kept in the cache and
// proved on the next run without starting the program: the answer is a function of the files it
// read (the program, its headers) and of the directories it looked them up in, so it is reused
// only while every one of those paths has the identity it had (real path, device, inode, size,
// mtime and ctime to the nanosecond; or is still absent). ctime cannot be set from user space, so
// a file rewritten since changes it, and a directory changes it when an entry is added, removed
// or renamed in it (a header that would now shadow one found later in the search path). A path
// changed in the same clock tick as the answer was taken could keep its timestamps: such answers
// are not kept (as git does with its racy entries). The memo carries a checksum of itself: a
// damaged one is not used. Best effort both ways: an unreadable or unwritable memo only costs
// starting the program.
import { mkdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tempPathFor } from './atomic.js';
import { hashValue } from './hash.js';

/** Bump when what a memo holds changes meaning. */
const MEMO_VERSION = 2;
/** racyMs: a path changed less than this before the answer was taken is not trusted to show it (tests lower it). */
export const probeMemoSettings = { racyMs: 2000 };

interface Identity {
  path: string;
  /** `real:dev:ino:size:mtimeNs:ctimeNs`, or `absent`. */
  id: string;
}

/** The identity of `path`; undefined when it cannot be told (an error other than absence). */
async function identity(path: string, startedMs?: number): Promise<Identity | undefined> {
  try {
    const real = await realpath(path);
    const st = await stat(real, { bigint: true });
    // Racy: changed so shortly before the answer that a later change might keep these timestamps.
    if (startedMs !== undefined && (Number(st.ctimeMs) > startedMs - probeMemoSettings.racyMs || Number(st.mtimeMs) > startedMs - probeMemoSettings.racyMs)) return undefined;
    return { path, id: `${real}:${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}` };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ENOTDIR' ? { path, id: 'absent' } : undefined;
  }
}

export interface ProbeAnswer<T> {
  value: T;
  /**
   * Every path the answer depends on (absolute): the files read, and the directories searched
   * (and the ones that would have been searched, even when absent). None: the answer is not kept.
   */
  files: string[];
}

interface Kept<T> {
  sum: string;
  files: Identity[];
  value: T;
}

const sumOf = (files: Identity[], value: unknown) => hashValue({ v: MEMO_VERSION, files, value });

/**
 * `compute()`'s value, or the one kept under `cacheRoot/probes/` for the same `key` while the paths
 * it named are unchanged. `key` holds whatever else the answer depends on (arguments, environment).
 */
export async function memoizedProbe<T>(cacheRoot: string, name: string, key: unknown, compute: () => Promise<ProbeAnswer<T>>): Promise<T> {
  const file = join(cacheRoot, 'probes', `${name}-${hashValue({ v: MEMO_VERSION, key }).slice(0, 32)}.json`);
  try {
    const kept = JSON.parse(await readFile(file, 'utf8')) as Kept<T>;
    if (kept.files.length && kept.sum === sumOf(kept.files, kept.value)) {
      const now = await Promise.all(kept.files.map((f) => identity(f.path)));
      if (now.every((n, i) => n !== undefined && n.id === kept.files[i]!.id)) return kept.value;
    }
  } catch {
    // no memo yet, or an unreadable or damaged one: ask the program
  }
  const started = Date.now();
  const answer = await compute();
  try {
    const files = await Promise.all([...new Set(answer.files)].map((f) => identity(f, started)));
    if (files.length && files.every((f) => f !== undefined)) {
      const ids = files as Identity[];
      await mkdir(join(cacheRoot, 'probes'), { recursive: true });
      const tmp = tempPathFor(file);
      try {
        await writeFile(tmp, JSON.stringify({ sum: sumOf(ids, answer.value), files: ids, value: answer.value } satisfies Kept<T>));
        await rename(tmp, file);
      } finally {
        await rm(tmp, { force: true });
      }
    }
  } catch {
    // an unwritable cache: the next run asks again
  }
  return answer.value;
}
