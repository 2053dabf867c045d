// Content-addressed cache under $XDG_CACHE_HOME/domu (or --cache-dir).
// An entry is a directory `<root>/<kind>/<key>/`; it is produced in a temporary directory
// beside it and renamed into place when complete, so a crash never leaves a half entry that a
// later run would trust. Two producers of the same key race harmlessly: the first rename wins.
//
// An entry carries a manifest (src/core/manifest.ts) written before the rename, and a lookup
// proves the entry against it; an entry that fails (a file truncated, removed, added or changed,
// a symlink changed, the manifest missing or garbled) is never used: it is renamed aside to a
// `.tmp-` name (swept like any temporary), removed, the caller is told why in one warning, and
// the lookup is a miss. Small entries are hashed in full on every lookup; big ones (`stat`) are
// proved by a stat fingerprint and hashed in full only when it changed (numbers in README.md).
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { renameDirInto, sweepTemps, tempPathFor } from './atomic.js';
import { faultPoint } from './fault.js';
import { hasManifest, verifyByHash, verifyByStat, writeManifest, type VerifyResult } from './manifest.js';
import { FileHashes } from './filehashes.js';

const exists = (p: string) => stat(p).then(() => true, () => false);

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME;
  return join(xdg && xdg.startsWith('/') ? xdg : join(homedir(), '.cache'), 'domu');
}

const KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * How a lookup proves an entry (costs measured in README.md, Caching):
 * - `hash`: every file hashed against the manifest (small entries: sources, installs, kconfig,
 *   probes, module indexes; milliseconds);
 * - `stat`: the stat fingerprint compared, every file hashed only when it differs (unpacked
 *   kernel packages and headers: ~4000–16000 paths, hundreds of MB);
 * - `deferred`: only that the entry has a manifest (an entry of an older domu is rebuilt at
 *   once); the caller proves it in full when it actually uses the entry (extracted source trees,
 *   which a rebuild with a cached compile never reads: see verifiedTree in src/stages/extract.ts).
 */
export type VerifyMode = 'hash' | 'stat' | 'deferred';

/** Kinds whose lookups are not `hash` unless the caller says otherwise. */
const KIND_MODES: Record<string, VerifyMode> = { trees: 'deferred', kernels: 'stat', 'kernel-headers': 'stat' };

export interface CacheWarn {
  warn(msg: string): void;
}

export interface LookupOptions {
  /** Where the corruption warning goes (default: the cache's own logger, if any). */
  log?: CacheWarn | undefined;
  /** What happens instead, for the warning: `rebuilding` (default), `fetching again`, … */
  redo?: string | undefined;
  verify?: VerifyMode | undefined;
  /**
   * A further check of a verified entry (e.g. a tarball against its pinned sha256): a problem
   * text makes the entry corrupt like a manifest mismatch does.
   */
  check?: ((dir: string) => Promise<string | undefined>) | undefined;
  /** Told why, when the entry was corrupt and discarded. */
  onCorrupt?: ((reason: string) => void) | undefined;
}

export class Cache {
  /** sha256 of files remembered by identity (core/filehashes.ts); written when the run closes. */
  readonly fileHashes: FileHashes;

  /** `signal`: the run's abort signal (only the fault injection point waits on it). */
  constructor(
    readonly root: string,
    private readonly signal?: AbortSignal,
    private readonly log?: CacheWarn,
  ) {
    this.fileHashes = new FileHashes(join(root, 'probes', 'file-hashes.json'));
  }

  entryPath(kind: string, key: string): string {
    if (!KEY_RE.test(kind) || !KEY_RE.test(key)) throw new Error(`bad cache address ${kind}/${key}`);
    return join(this.root, kind, key);
  }

  /**
   * The entry's directory if it exists and is proved intact, else undefined. A corrupt entry is
   * discarded with a warning (`cache entry <kind>/<key> is corrupt (<why>); <redo>`).
   */
  async lookup(kind: string, key: string, opts: LookupOptions = {}): Promise<string | undefined> {
    const p = this.entryPath(kind, key);
    try {
      if (!(await stat(p)).isDirectory()) return undefined;
    } catch {
      return undefined;
    }
    const mode = opts.verify ?? KIND_MODES[kind] ?? 'hash';
    let result: VerifyResult = mode === 'stat' ? await verifyByStat(p) : mode === 'deferred' ? hasManifest(p) : await verifyByHash(p);
    if (result.ok && opts.check) {
      const problem = await opts.check(p);
      if (problem) result = { ok: false, reason: problem };
    }
    if (result.ok) return p;
    const reason = result.reason ?? 'unknown';
    await this.discard(kind, key, reason, opts);
    opts.onCorrupt?.(reason);
    return undefined;
  }

  /**
   * Drop a corrupt entry: rename it aside (a `.tmp-` name: readers never see it again, and a
   * failed removal is swept later), remove it, and warn.
   */
  async discard(kind: string, key: string, reason: string, opts: Pick<LookupOptions, 'log' | 'redo'> = {}): Promise<void> {
    const p = this.entryPath(kind, key);
    (opts.log ?? this.log)?.warn(`cache entry ${kind}/${key} is corrupt (${reason}); ${opts.redo ?? 'rebuilding'}`);
    const aside = tempPathFor(p);
    try {
      await rename(p, aside);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // another process discarded it
      throw e;
    }
    await rm(aside, { recursive: true, force: true }).catch(() => {});
  }

  /**
   * Produce an entry: `produce` fills a fresh temporary directory; its manifest is written and
   * it is renamed into place. On failure the temporary directory is removed and the error rethrown.
   * `onTemp` lets the caller register the temporary directory with its cleanup registry.
   */
  async store(kind: string, key: string, produce: (dir: string) => Promise<void>, onTemp?: (dir: string) => () => void, opts: Omit<LookupOptions, 'check' | 'onCorrupt'> = {}): Promise<string> {
    const target = this.entryPath(kind, key);
    await mkdir(join(this.root, kind), { recursive: true });
    const tmp = tempPathFor(target);
    await mkdir(tmp);
    const release = onTemp?.(tmp);
    try {
      await produce(tmp);
      await writeManifest(tmp);
      await faultPoint(`cache:${kind}`, this.signal);
      // The rename keeps an entry that is already there (another producer of the same content
      // was first): make sure that one is intact (--no-cache stores without looking up).
      if (await exists(target)) await this.lookup(kind, key, { ...opts, verify: (opts.verify ?? KIND_MODES[kind]) === 'deferred' ? 'hash' : opts.verify });
      await renameDirInto(tmp, target);
      return target;
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    } finally {
      release?.();
    }
  }

  async remove(kind: string, key: string): Promise<void> {
    await rm(this.entryPath(kind, key), { recursive: true, force: true });
  }

  /** Remove temporaries left by crashed runs. */
  async sweep(kind: string): Promise<void> {
    await sweepTemps(join(this.root, kind));
  }
}
