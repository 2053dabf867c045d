// The extract stage: the verified busybox tarball → a source tree in the cache (kind `trees`).
// Keyed by the tarball's sha256 and EXTRACTOR_VERSION, so a tree is extracted once per tarball;
// produced in the cache's temporary directory (registered for cleanup) and renamed into place.
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { writeFileAtomic } from '../lib/atomic.js';
import { newestMtime } from '../lib/epoch.js';
import { DomuError, InputError } from '../lib/errors.js';
import { sha256File, SHA256_RE } from '../lib/hash.js';
import { safeExtract, type Decompressor } from '../lib/tar.js';
import type { StageContext } from '../pipeline/context.js';

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
    const hit = await ctx.cache.lookup(TREES_KIND, key);
    if (hit) {
      const tree = join(hit, 'src');
      if (await isDir(tree)) {
        ctx.log.info(`source tree of ${name} cached: ${tree}`);
        return { tree, cacheHit: true };
      }
      ctx.log.warn(`cached tree ${hit} has no src/ directory; extracting again`);
      await ctx.cache.remove(TREES_KIND, key);
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
  const entry = await ctx.cache.store(
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
  );
  const r = result!;
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  ctx.log.info(
    `extracted ${name} (${r.decompressor === 'native' ? 'bzip2 program' : 'in-process decompression'}): ` +
      `${r.files} files, ${r.dirs} directories, ${r.symlinks} symlinks, ${r.hardlinks} hardlinks, ${(r.bytes / 1048576).toFixed(1)} MiB in ${secs} s`,
  );
  return { tree: join(entry, 'src'), cacheHit: false, decompressor: r.decompressor, files: r.files };
}

/** Beside `src/` in a tree entry: the newest mtime in the tree (the default SOURCE_DATE_EPOCH). */
const NEWEST_MTIME = 'newest-mtime';

/**
 * The newest mtime (seconds) in an extracted tree: the build's default SOURCE_DATE_EPOCH.
 * Walking the ~5000 files takes 0.2–0.3 s, so it is computed once per tree entry, at its first
 * use (not during extraction, which only some commands need), and kept beside `src/`.
 */
export async function treeNewestMtime(tree: string): Promise<number> {
  const memo = join(dirname(tree), NEWEST_MTIME);
  const known = Number((await readFile(memo, 'utf8').catch(() => '')).trim());
  if (Number.isSafeInteger(known) && known > 0) return known;
  const newest = await newestMtime(tree);
  await writeFileAtomic(memo, `${newest}\n`).catch(() => {}); // a read-only cache only costs the walk next time
  return newest;
}

async function isDir(p: string): Promise<boolean> {
  return stat(p).then(
    (s) => s.isDirectory(),
    () => false,
  );
}
