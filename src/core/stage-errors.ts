// Turns low-level failures of a stage into the one clear line the user sees (e.g. a full disk:
// which path, which stage, what to do). Called by the pipeline for every failed stage.
//
// A full file system (ENOSPC) or an exceeded quota (EDQUOT) is found wherever it hides: the
// error's own code, its `cause` chain (a DomuError that wraps a Node error), or the stderr of a
// program that failed with "No space left on device". The line names:
// - the place: the cache (--cache-dir), --out, the store, the release directory or TMPDIR, when
//   the failing path lies in one of them (else the failing path's directory); the path comes from
//   the error (`path`/`dest` of fs errors), from the program's message, or, when neither has
//   one, from where the stage writes (the cache for the stages before the image, --out after);
// - the stage, in plain words;
// - the file system's size and free space now (statfs; a stage that removes its partial files
//   first, as the cache does, shows the space as it is again);
// - what to do.
//
// A file too large for its file system (EFBIG: ext4 holds no file of 16 TiB) or for this
// process's `ulimit -f` is found the same way and named the same way: the place, the stage, the
// file system's type, and what to do (a smaller image.size, another file system).
import { statfsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, resolve, sep } from 'node:path';
import { DomuError, errorMessage } from './errors.js';
import { exactSize, fileSizeRlimit } from './filesize.js';
import { mountOf } from './mounts.js';

/** Where a run writes; every field optional (the error's own path is used when nothing matches). */
export interface Places {
  /** --cache-dir (the run's work directory lives inside it). */
  cacheDir?: string | undefined;
  /** --out */
  outDir?: string | undefined;
  /** The store being published to. */
  store?: string | undefined;
  /** --dist of `domu release`. */
  distDir?: string | undefined;
}

export type Role = 'cache' | 'out' | 'store' | 'dist' | 'tmp' | 'other';

/** A full file system or quota, already explained (one line: place, stage, free space, what to do). */
export class NoSpaceError extends DomuError {
  constructor(
    message: string,
    /** The directory named in the message (undefined: unknown). */
    readonly dir: string | undefined,
    readonly code: 'ENOSPC' | 'EDQUOT',
    cause?: unknown,
  ) {
    super(message, cause === undefined ? {} : { cause });
    this.name = 'NoSpaceError';
  }
}

/** The error to report for `stage` failing with `err` (returned unchanged when nothing is better). */
export function explainStageError(stage: string, err: unknown, places: Places = {}): unknown {
  if (err instanceof NoSpaceError || err instanceof FileTooBigError) return err;
  const all = knownPlaces(places);
  const found = findNoSpace(err);
  if (found) {
    const where = placeOf(found.path ?? defaultPath(stage, all), all);
    return noSpaceError({ code: found.code, dir: where.dir, role: where.role, doing: stagePhrase(stage), cause: err });
  }
  const big = findTooBig(err);
  if (big) {
    const where = placeOf(big.path ?? defaultPath(stage, all), all);
    return tooBigError({ dir: where.dir, role: where.role, doing: stagePhrase(stage), cause: err });
  }
  return err;
}

// ---------------------------------------------------------------------------------------------
// Building the message (also used by stages that know more, e.g. the size they need)

export interface NoSpaceInput {
  code?: 'ENOSPC' | 'EDQUOT';
  /** The directory that is full (named as given); undefined when nothing says which. */
  dir: string | undefined;
  role?: Role;
  /** What was being done, e.g. "building the image busybox.img". */
  doing: string;
  /** Bytes needed, when known (the free-space checks). */
  need?: number;
  /** Appended after the free space, e.g. "nothing was written". */
  note?: string;
  /** The file system's state when the write failed (default: statfs now, after the cleanup). */
  fs?: FsState | undefined;
  cause?: unknown;
}

export interface FsState {
  free: number;
  total: number;
  files: number;
  freeFiles: number;
}

const ROLE_TEXT: Record<Role, string | undefined> = {
  cache: 'the cache, --cache-dir',
  out: 'the out directory, --out',
  store: 'the store',
  dist: 'the release directory, --dist',
  tmp: 'temporary files, TMPDIR',
  other: undefined,
};

const ADVICE: Record<Role, string> = {
  cache: 'free some space there or use --cache-dir on a larger file system',
  out: 'free some space there or use --out on a larger file system',
  store: 'free space on the store (old .prev or .bak files?) and publish again',
  dist: 'free some space there or use --dist on a larger file system',
  tmp: 'free some space there or set TMPDIR to a larger file system',
  other: 'free some space there and run again',
};

/** The NoSpaceError for a full `dir` (statfs now for the free space). */
export function noSpaceError(i: NoSpaceInput): NoSpaceError {
  const code = i.code ?? 'ENOSPC';
  const role = i.role ?? 'other';
  const roleText = ROLE_TEXT[role];
  const fs = i.fs ?? (i.dir === undefined ? undefined : fsState(i.dir));
  const noInodes = fs !== undefined && fs.files > 0 && fs.freeFiles === 0;
  let state: string;
  if (code === 'EDQUOT') state = `the quota is used up${fs ? ` (the file system itself has ${size(fs.free)} free)` : ''}`;
  else if (noInodes) state = `the file system has no free inodes left (${fs.files} in all; ${size(fs.free)} free)`;
  else if (i.need !== undefined) state = `it needs about ${size(i.need)}, ${fs ? `${size(fs.free)} free` : 'the free space is unknown'}`;
  else if (!fs) state = 'the free space is unknown';
  else state = `a file system of ${size(fs.total)} with ${size(fs.free)} free now`;
  let advice = code === 'EDQUOT' ? 'free some of your files there or ask for a larger quota' : ADVICE[role];
  if (noInodes) advice = advice.replace(/^free (some )?space/, 'remove some files');
  const head = code === 'EDQUOT' ? 'disk quota exceeded on' : 'no space left on';
  const message = `${head} ${i.dir ?? 'a file system'}${roleText ? ` (${roleText})` : ''} while ${i.doing}: ${state}${i.note ? `; ${i.note}` : ''}; ${advice}`;
  return new NoSpaceError(message, i.dir, code, i.cause);
}

/** Free and total bytes and inodes of the file system holding `dir` (its nearest existing ancestor). */
export function fsState(dir: string): FsState | undefined {
  for (let d = resolve(dir); ; d = dirname(d)) {
    try {
      const s = statfsSync(d);
      return { free: s.bavail * s.bsize, total: s.blocks * s.bsize, files: s.files, freeFiles: s.ffree };
    } catch {
      if (d === dirname(d)) return undefined;
    }
  }
}

/** `12.3 MiB`, `1.5 GiB`, `512 KiB`. */
export function size(bytes: number): string {
  const MiB = 1024 * 1024;
  if (bytes < MiB) return `${Math.round(bytes / 1024)} KiB`;
  if (bytes < 1024 * MiB) return `${(bytes / MiB).toFixed(1)} MiB`;
  return `${(bytes / (1024 * MiB)).toFixed(1)} GiB`;
}

const STAGES: Record<string, string> = {
  source: 'fetching the busybox source',
  extract: 'extracting the busybox source',
  kconfig: 'configuring busybox',
  compile: 'compiling busybox',
  kernel: 'getting the guest kernel',
  modules: 'collecting the kernel modules',
  rootfs: 'assembling the root file system',
  initramfs: 'generating the ramdisk',
  image: 'building the image',
  'xen configs': 'writing the Xen configs',
  record: 'recording the build (build.json)',
  store: 'checking the store',
  publish: 'publishing to the store',
  release: 'writing the release',
  verify: 'booting the guest',
  check: 'checking the build',
  /** Run.prepare: journal, run log and --out lock, before any stage. */
  prepare: 'starting the run',
};

export function stagePhrase(stage: string): string {
  return STAGES[stage] ?? `the ${stage} stage`;
}

// ---------------------------------------------------------------------------------------------
// Finding ENOSPC / EDQUOT and the path

interface Found {
  code: 'ENOSPC' | 'EDQUOT';
  path?: string | undefined;
}

const NOSPC_TEXT = /No space left on device|\bENOSPC\b/;
const DQUOT_TEXT = /Disk quota exceeded|\bEDQUOT\b/;

/** ENOSPC or EDQUOT in `err`, its cause chain or a program's stderr; with the path if one is known. */
export function findNoSpace(err: unknown): Found | undefined {
  let code: Found['code'] | undefined;
  /** From an fs error's own fields: the best evidence, wherever it is in the chain. */
  let path: string | undefined;
  /** From a message or a program's stderr. */
  let textPath: string | undefined;
  const seen = new Set<unknown>();
  for (let e = err; e !== undefined && e !== null && !seen.has(e) && seen.size < 16; e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    const o = e as NodeJS.ErrnoException & { dest?: unknown; stderr?: unknown; imageFull?: boolean };
    // The image itself being full is the image stage's business (image.size too small), not the disk's.
    if (o.imageFull) return undefined;
    let here: Found['code'] | undefined;
    if (o.code === 'ENOSPC' || o.code === 'EDQUOT') here = o.code;
    const text = `${errorMessage(e)}\n${typeof o.stderr === 'string' ? o.stderr : ''}`;
    if (!here && NOSPC_TEXT.test(text)) here = 'ENOSPC';
    if (!here && DQUOT_TEXT.test(text)) here = 'EDQUOT';
    if (!here) continue;
    code ??= here;
    // copyfile, rename, link: the destination is where the space was missing.
    const own = typeof o.dest === 'string' ? o.dest : typeof o.path === 'string' ? o.path : undefined;
    if (own && isAbsolute(own)) path ??= own;
    else textPath ??= pathFromText(text, [NOSPC_TEXT, DQUOT_TEXT]);
  }
  return code ? { code, path: path ?? textPath } : undefined;
}

/**
 * The path a program's message names where the space ran out: the quoted or plain absolute path
 * on the "No space left" line (cp, tar, gcc, dpkg-deb, zstd), else the last absolute path of the
 * command line in our ExecError message (the destination, for cp, mke2fs, zstd -o, dpkg-deb -x).
 */
function pathFromText(text: string, res: readonly RegExp[]): string | undefined {
  const lines = text.split('\n');
  const hit = lines.filter((l) => res.some((re) => re.test(l)));
  for (const l of [...hit, ...lines]) {
    const quoted = [...l.matchAll(/['"‘“](\/[^'"’”]+)['"’”]/g)].map((m) => m[1]!);
    const plain = [...l.matchAll(/(?:^|[\s:=(])(\/[^\s:'",()]+)/g)].map((m) => m[1]!);
    const ok = (p: string) => !p.startsWith('/dev/') && !p.startsWith('/proc/') && p !== '/';
    // The last quoted path (`copyfile 'src' -> 'dest'`, `error writing 'file'`), else the last plain one.
    const paths = quoted.filter(ok).length ? quoted.filter(ok) : plain.filter(ok);
    if (paths.length) return paths[paths.length - 1];
  }
  return undefined;
}

/** The places, as absolute paths. */
function knownPlaces(p: Places): Places {
  const r = (v: string | undefined) => (v === undefined ? undefined : resolve(v));
  return { cacheDir: r(p.cacheDir), outDir: r(p.outDir), store: r(p.store), distDir: r(p.distDir) };
}

const CACHE_STAGES = new Set(['source', 'extract', 'kconfig', 'compile', 'kernel', 'modules', 'rootfs', 'initramfs']);
const OUT_STAGES = new Set(['image', 'xen configs', 'record']);

/** Where a stage writes when the error does not say. */
function defaultPath(stage: string, p: Places): string | undefined {
  if (CACHE_STAGES.has(stage) || stage === 'prepare') return p.cacheDir;
  if (OUT_STAGES.has(stage)) return p.outDir;
  if (stage === 'publish' || stage === 'store') return p.store;
  if (stage === 'release') return p.distDir;
  return undefined;
}

function inside(path: string, dir: string | undefined): boolean {
  return dir !== undefined && (path === dir || path.startsWith(dir.endsWith(sep) ? dir : `${dir}${sep}`));
}

/** The place that holds `path`, and the directory to name. */
function placeOf(path: string | undefined, p: Places): { dir: string | undefined; role: Role } {
  if (path === undefined) return { dir: undefined, role: 'other' };
  const abs = resolve(path);
  // The most specific place first (--out may lie inside the cache directory, or the other way).
  const candidates = ([['store', p.store], ['out', p.outDir], ['dist', p.distDir], ['cache', p.cacheDir]] as const)
    .filter(([, d]) => inside(abs, d))
    .sort((a, b) => b[1]!.length - a[1]!.length);
  const best = candidates[0];
  if (best) return { dir: best[1]!, role: best[0] };
  const dir = existingDir(abs);
  // A program's scratch file right in TMPDIR (gcc's /tmp/cc*.s), not a directory someone made there.
  if (dir === resolve(tmpdir())) return { dir, role: 'tmp' };
  return { dir, role: 'other' };
}

/** The nearest existing directory at or above `path` (a file's directory; a removed temp's parent). */
function existingDir(path: string): string {
  for (let d = path; ; d = dirname(d)) {
    let st;
    try {
      st = statSync(d, { throwIfNoEntry: false });
    } catch {
      st = undefined; // EACCES and the like: look further up
    }
    if (st) return st.isDirectory() ? d : dirname(d);
    if (d === dirname(d)) return path;
  }
}

// ---------------------------------------------------------------------------------------------
// A file too large for its file system (EFBIG)

/** A file bigger than its file system (or `ulimit -f`) can hold, already explained in one line. */
export class FileTooBigError extends DomuError {
  constructor(
    message: string,
    /** The directory named in the message (undefined: unknown). */
    readonly dir: string | undefined,
    cause?: unknown,
  ) {
    super(message, cause === undefined ? {} : { cause });
    this.name = 'FileTooBigError';
  }
}

/** Also a program that the kernel stopped at `ulimit -f` (children get SIGXFSZ's default action). */
const FBIG_TEXT = /File too large|\bEFBIG\b|killed by SIGXFSZ/;

/** EFBIG in `err`, its cause chain or a program's stderr ("File too large"); with the path if one is known. */
export function findTooBig(err: unknown): { path?: string | undefined } | undefined {
  let found = false;
  let path: string | undefined;
  let textPath: string | undefined;
  const seen = new Set<unknown>();
  for (let e = err; e !== undefined && e !== null && !seen.has(e) && seen.size < 16; e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    const o = e as NodeJS.ErrnoException & { dest?: unknown; stderr?: unknown };
    const text = `${errorMessage(e)}\n${typeof o.stderr === 'string' ? o.stderr : ''}`;
    if (o.code !== 'EFBIG' && !FBIG_TEXT.test(text)) continue;
    found = true;
    const own = typeof o.dest === 'string' ? o.dest : typeof o.path === 'string' ? o.path : undefined;
    if (own && isAbsolute(own)) path ??= own;
    else textPath ??= pathFromText(text, [FBIG_TEXT]);
  }
  return found ? { path: path ?? textPath } : undefined;
}

export interface TooBigInput {
  /** The directory the file was to go into; undefined when nothing says which. */
  dir: string | undefined;
  role?: Role;
  /** What was being done, e.g. "building the image busybox.img". */
  doing: string;
  /** The file's size, when known (the image's image.size). */
  size?: number;
  /** The biggest file that fits, when known (probed). */
  limit?: number;
  /** Appended after the state, e.g. "the store is unchanged". */
  note?: string;
  cause?: unknown;
}

const TOO_BIG_ADVICE: Record<Role, string> = {
  cache: 'use --cache-dir on a file system that holds bigger files',
  out: 'choose a smaller image.size, or use --out on a file system that holds bigger files',
  store: 'choose a smaller image.size, or a store on a file system that holds bigger files',
  dist: 'use --dist on a file system that holds bigger files',
  tmp: 'set TMPDIR to a file system that holds bigger files',
  other: 'use a file system that holds bigger files',
};

/** The FileTooBigError for a file that `dir`'s file system (or `ulimit -f`) cannot hold. */
export function tooBigError(i: TooBigInput): FileTooBigError {
  const role = i.role ?? 'other';
  const roleText = ROLE_TEXT[role];
  const rlimit = fileSizeRlimit();
  const what = i.size === undefined ? 'a file that large' : `a file of ${exactSize(i.size)}`;
  let state: string;
  let advice = TOO_BIG_ADVICE[role];
  if (rlimit !== undefined && (i.size === undefined || i.size > rlimit) && (i.limit === undefined || i.limit >= rlimit)) {
    state = `this process may not write ${what} (its file size limit, ulimit -f, is ${exactSize(rlimit)})`;
    advice = `raise the limit (ulimit -f unlimited) or ${advice}`;
  } else {
    const type = i.dir === undefined ? undefined : mountOf(i.dir)?.type;
    state = `${type ? `its file system (${type})` : 'its file system'} cannot hold ${what}${i.limit === undefined ? '' : ` (the biggest it holds is ${exactSize(i.limit)})`}`;
  }
  const message = `file too large for ${i.dir ?? 'a file system'}${roleText ? ` (${roleText})` : ''} while ${i.doing}: ${state}${i.note ? `; ${i.note}` : ''}; ${advice}`;
  return new FileTooBigError(message, i.dir, i.cause);
}
