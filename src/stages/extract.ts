// The extract stage: the verified busybox tarball → a source tree in the cache (kind `trees`).
// Keyed by the tarball's sha256 and EXTRACTOR_VERSION, so a tree is extracted once per tarball;
// produced in the cache's temporary directory (registered for cleanup) and renamed into place.
import { readdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { newestMtime } from '../core/epoch.js';
import { AbortedError, DomuError, InputError } from '../core/errors.js';
import { findNoSpace } from '../core/stage-errors.js';
import { sha256File, SHA256_RE } from '../core/hash.js';
import { manifestFileSha256, manifestNewestMtime } from '../core/manifest.js';
import { safeExtract, type Decompressor } from '../fs/tar.js';
import type { StageContext } from '../core/context.js';

/** Bump when what extraction produces changes (refusal rules, modes, times, layout). */
export const EXTRACTOR_VERSION = 1;

export const TREES_KIND = 'trees';

export interface ExtractInput {
  tarball: string;
  /** The tarball's sha256 (proved by the source stage); the cache key. */
  sha256: string;
  /** --pure-js: decompress bzip2 in-process even when `bzip2` is installed. */
  pureJs?: boolean;
  /** --no-cache: extract again even when the tree is cached. */
  noCache?: boolean;
  /**
   * Where the tarball came from (a path or URL), named in errors instead of the cache copy's
   * name; `userGiven` (--source): a refused archive is then bad input (exit 2), not a failure.
   */
  origin?: { label: string; userGiven: boolean };
}

export interface ExtractOutput {
  /** The extracted source tree (top directory stripped). */
  tree: string;
  cacheHit: boolean;
  /** How bzip2 was decompressed (only when extracted in this run). */
  decompressor?: Decompressor;
  files?: number;
}

export function treeCacheKey(sha256: string): string {
  return `${sha256}-x${EXTRACTOR_VERSION}`;
}

export async function extractStage(input: ExtractInput, ctx: StageContext): Promise<ExtractOutput> {
  const sha = input.sha256.toLowerCase();
  if (!SHA256_RE.test(sha)) throw new InputError(`extract: not a sha256: ${input.sha256}`);
  const key = treeCacheKey(sha);
  const name = basename(input.tarball);

  // --no-cache extracts again but never deletes the shared entry: another build may be copying
  // from it. The store below keeps whichever identical tree is in place first.
  if (!input.noCache) {
    // Not proved here: a rebuild whose configure and compile are cached never reads the tree, and
    // even a stat walk of its ~3000 paths costs 20–50 ms. It is hashed in full when it is used
    // (verifiedTree, before kconfig or compile copy it); here only its manifest must exist.
    const hit = await ctx.cache.lookup(TREES_KIND, key, { log: ctx.log, redo: 'extracting again', check: async (d) => ((await isDir(join(d, 'src'))) ? undefined : 'no src/ directory') });
    if (hit) {
      const tree = join(hit, 'src');
      ctx.log.info(`source tree of ${name} cached: ${tree}`);
      return { tree, cacheHit: true };
    }
  }

  // The key claims this content: make sure of it before anything is stored under it.
  const actual = await sha256File(input.tarball);
  if (actual !== sha) throw new DomuError(`${name}: sha256 is ${actual}, expected ${sha}`);

  ctx.log.info(`extracting ${name}${input.pureJs ? ' (in-process decompression: --pure-js)' : ''}`);
  const started = Date.now();
  let lastShown = 0;
  const onProgress = (bytes: number) => {
    const now = Date.now();
    if (now - lastShown < 200) return;
    lastShown = now;
    ctx.progress(`${(bytes / 1048576).toFixed(1)} MiB extracted`);
  };
  let result: Awaited<ReturnType<typeof safeExtract>> | undefined;
  const entry = await ctx.cache
    .store(
    TREES_KIND,
    key,
    async (dir) => {
      result = await safeExtract({
        archive: input.tarball,
        dest: join(dir, 'src'),
        env: ctx,
        decompressor: input.pureJs ? 'js' : 'auto',
        onProgress,
      });
    },
    (tmp) => ctx.cleanup.tempPath(tmp),
    { log: ctx.log, redo: 'replacing it' },
    )
    .catch((e: unknown) => {
      throw relabel(e, name, input.origin);
    });
  const r = result!;
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  ctx.log.info(
    `extracted ${name} (${r.decompressor === 'native' ? 'bzip2 program' : 'in-process decompression'}): ` +
      `${r.files} files, ${r.dirs} directories, ${r.symlinks} symlinks, ${r.hardlinks} hardlinks, ${(r.bytes / 1048576).toFixed(1)} MiB in ${secs} s`,
  );
  return { tree: join(entry, 'src'), cacheHit: false, decompressor: r.decompressor, files: r.files };
}

/** An archive's refusal, naming the file the user knows (and as bad input when they gave it). */
function relabel(e: unknown, name: string, origin: ExtractInput['origin']): unknown {
  if (!origin || !(e instanceof DomuError) || e instanceof AbortedError || !e.message.startsWith(`${name}: `)) return e;
  if (findNoSpace(e)) return e; // a full cache is not the archive's fault (and stage-errors names the place)
  const message = `${origin.label}: ${e.message.slice(name.length + 2)}`;
  return origin.userGiven ? new InputError(message, e.hint ?? 'give a busybox release tarball') : new DomuError(message, { ...(e.hint ? { hint: e.hint } : {}), cause: e });
}

/**
 * The newest mtime (seconds) in an extracted tree: the build's default SOURCE_DATE_EPOCH. Read
 * from the entry's manifest, which records every path's mtime as extracted (a tree outside the
 * cache is walked: ~5000 lstat calls, 0.2–0.3 s).
 */
export async function treeNewestMtime(tree: string): Promise<number> {
  return (basename(tree) === 'src' ? manifestNewestMtime(dirname(tree), 'src') : undefined) ?? (await newestMtime(tree));
}

/**
 * `tree` (an extract result) proved byte for byte before it is used: hashing its ~2900 paths,
 * 10 MB, costs ~0.1 s, nothing next to the configure or compile that copies it. A corrupt (or
 * meanwhile removed) tree is discarded with a warning and extracted again from the cached
 * tarball (itself proved against its pinned sha256); the path is the same. A tree outside the
 * cache is returned as it is.
 */
export async function verifiedTree(ctx: StageContext, tree: string): Promise<string> {
  const entry = dirname(tree);
  const key = basename(entry);
  if (basename(tree) !== 'src' || dirname(entry) !== join(ctx.cache.root, TREES_KIND)) return tree;
  const sha = key.slice(0, 64);
  if (key !== treeCacheKey(sha)) return tree;
  if (await ctx.cache.lookup(TREES_KIND, key, { log: ctx.log, redo: 'extracting again', verify: 'hash' })) return tree;
  const tarball = await cachedTarball(ctx, sha);
  if (!tarball) throw new DomuError(`the cached source tree ${entry} was corrupt and the tarball it came from is no longer cached`, { hint: 'run the build again: it fetches the tarball and extracts it anew' });
  const again = await extractStage({ tarball, sha256: sha }, ctx);
  return again.tree;
}

/** The tarball of a `sources/<sha>` entry, proved against its manifest and its sha256. */
async function cachedTarball(ctx: StageContext, sha: string): Promise<string | undefined> {
  let tarball: string | undefined;
  const hit = await ctx.cache.lookup('sources', sha, {
    log: ctx.log,
    redo: 'fetching the tarball again',
    check: async (d) => {
      const names = (await readdir(d)).filter((n) => n.endsWith('.tar.bz2'));
      const found = names.length === 1 ? join(d, names[0]!) : undefined;
      if (!found || manifestFileSha256(d, basename(found)) !== sha) return 'the tarball is not the pinned release';
      tarball = found;
      return undefined;
    },
  });
  return hit && tarball;
}

async function isDir(p: string): Promise<boolean> {
  return stat(p).then(
    (s) => s.isDirectory(),
    () => false,
  );
}
