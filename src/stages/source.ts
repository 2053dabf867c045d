// The source stage: obtain the busybox release tarball and prove its sha256.
// Providers, in order: cache → --source PATH|URL → upstream and mirrors → the distribution's
// source archive (apt, private configuration) when the description allows the fallback.
import { findNoSpace } from '../core/stage-errors.js';
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { aptUpdate, downloadOrigTarball, makePrivateApt, showSource, type SourceVersion } from '../fetch/apt.js';
import { tempPathFor, writeFileAtomic } from '../core/atomic.js';
import { download } from '../fetch/download.js';
import { AbortedError, DomuError, errorMessage, InputError } from '../core/errors.js';
import { sha256File } from '../core/hash.js';
import { manifestFileSha256 } from '../core/manifest.js';
import { compareVersions, knownReleases, RELEASES_FILE, tarballName } from '../busybox/releases.js';
import type { StageContext } from '../core/context.js';

export const UPSTREAM_BASE = 'https://busybox.net/downloads';

export interface SourceInput {
  version: string;
  /** --sha256: the expected hash for a version not in the table (or to pin it again). */
  sha256?: string | undefined;
  /** --source: a local tarball path or an http(s) URL, tried before upstream. */
  source?: string | undefined;
  mirrors: string[];
  fallback: 'distro' | 'none';
  /** --strict-version: never substitute another version. */
  strictVersion: boolean;
  /** --no-cache: fetch again even when the tarball is cached. */
  noCache?: boolean;
  /** Upstream base URL (tests point it at a local server). */
  upstreamBase?: string;
  /** Where the distribution provider reads the system's apt sources (tests). */
  aptEtc?: string;
}

export type ProviderName = 'cache' | 'local' | 'url' | 'upstream' | 'mirror' | 'distro';

export interface SourceOutput {
  tarball: string;
  sha256: string;
  requestedVersion: string;
  resolvedVersion: string;
  provider: ProviderName;
  /** Where the bytes came from: a path, a URL, or `debian:<package>=<version>`. */
  origin: string;
  cacheHit: boolean;
  substitution?: { requested: string; used: string; reason: string; from: string } | undefined;
  /** Providers tried before the one that succeeded, with their errors. */
  attempts: { provider: ProviderName; origin: string; error: string }[];
}

interface Origin {
  version: string;
  provider: ProviderName;
  origin: string;
  substitution?: SourceOutput['substitution'];
}

/** The sha256 a version must have: --sha256, else the table; plan-time error otherwise. */
export function expectedSha256(version: string, given?: string): string {
  const known = knownReleases().get(version);
  if (given) {
    if (!/^[0-9a-f]{64}$/.test(given)) throw new InputError(`--sha256 ${given}: not a sha256 (64 lowercase hex digits)`);
    if (known && known.sha256 !== given) {
      throw new InputError(`--sha256 for busybox ${version} differs from the pinned hash ${known.sha256} in ${RELEASES_FILE}`, 'drop --sha256, or fix the table if upstream re-rolled the tarball');
    }
    return given;
  }
  if (!known) {
    throw new InputError(`busybox ${version} is not in the table of known releases (${RELEASES_FILE})`, `pass --sha256 <hash of busybox-${version}.tar.bz2>, or add a line to that file`);
  }
  return known.sha256;
}

class ProviderMiss extends Error {}

export async function sourceStage(input: SourceInput, ctx: StageContext): Promise<SourceOutput> {
  const want = expectedSha256(input.version, input.sha256);
  const attempts: SourceOutput['attempts'] = [];
  const done = (tarball: string, sha: string, o: Origin, cacheHit: boolean): SourceOutput => {
    ctx.log.info(cacheHit ? `busybox ${o.version}: from the cache (${o.origin}), sha256 ${sha}` : `busybox ${o.version}: fetched from ${o.provider} (${o.origin}), sha256 ${sha}`);
    if (o.substitution) ctx.log.warn(substitutionText(o.substitution));
    return { tarball, sha256: sha, requestedVersion: input.version, resolvedVersion: o.version, provider: o.provider, origin: o.origin, cacheHit, substitution: o.substitution, attempts };
  };

  // 1. cache (the requested version, then a remembered substitution when one is allowed)
  const hit = input.noCache ? undefined : await fromCache(ctx, want, attempts);
  if (hit) return done(hit.tarball, want, { version: hit.origin.version, provider: 'cache', origin: hit.origin.origin }, true);
  if (!attempts.length) attempts.push({ provider: 'cache', origin: ctx.cache.entryPath('sources', want), error: 'not cached' });
  if (input.fallback === 'distro' && !input.strictVersion && !input.noCache) {
    const memo = await readMemo(ctx, input.version);
    if (memo) {
      const sub = await fromCache(ctx, memo.sha256);
      if (sub) {
        // The substitution as it was decided (same words, same origin), so that a rebuild records
        // the same provenance; when it was decided goes to the log.
        const substitution = memo.substitution ?? {
          requested: input.version,
          used: sub.origin.version,
          reason: `busybox ${input.version} could not be obtained`,
          from: sub.origin.origin,
        };
        ctx.log.info(`source: substitution for ${input.version} remembered from ${new Date(memo.at).toISOString()} (kept 24 h)`);
        return done(sub.tarball, memo.sha256, { version: sub.origin.version, provider: 'cache', origin: memo.origin ?? sub.origin.origin, substitution }, true);
      }
    }
  }

  const tryProvider = async (provider: ProviderName, origin: string, fn: () => Promise<SourceOutput>): Promise<SourceOutput | undefined> => {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof AbortedError || ctx.signal.aborted) throw e;
      // A hash mismatch is an integrity problem: stop, never fall through to another provider.
      if (e instanceof DomuError && /sha256 mismatch/.test(e.message)) throw e;
      // A full cache is not a provider's failure: the next provider would fill it too (apt-get hung).
      if (findNoSpace(e)) throw e;
      if (e instanceof InputError) throw e;
      attempts.push({ provider, origin, error: errorMessage(e).split('\n')[0]! });
      ctx.log.info(`${provider} ${origin}: ${errorMessage(e).split('\n')[0]}`);
      return undefined;
    }
  };

  // 2. --source PATH|URL
  if (input.source) {
    const src = input.source;
    const isUrl = /^https?:\/\//.test(src);
    const r = await tryProvider(isUrl ? 'url' : 'local', src, async () => {
      const o: Origin = { version: input.version, provider: isUrl ? 'url' : 'local', origin: src };
      const tarball = isUrl ? await storeDownload(ctx, src, want, input.version, o) : await storeLocal(ctx, src, want, input.version, o);
      return done(tarball, want, o, false);
    });
    if (r) return r;
  }

  // 3. upstream, then mirrors
  const urls: [ProviderName, string][] = [
    ['upstream', `${(input.upstreamBase ?? UPSTREAM_BASE).replace(/\/$/, '')}/${tarballName(input.version)}`],
    ...input.mirrors.map((m): [ProviderName, string] => ['mirror', `${m.replace(/\/$/, '')}/${tarballName(input.version)}`]),
  ];
  for (const [provider, url] of urls) {
    const r = await tryProvider(provider, url, async () => {
      const o: Origin = { version: input.version, provider, origin: url };
      return done(await storeDownload(ctx, url, want, input.version, o), want, o, false);
    });
    if (r) return r;
  }

  // 4. the distribution's source archive
  if (input.fallback === 'distro') {
    const r = await tryProvider('distro', "Debian's source archive", () => fromDistro(input, want, ctx, done));
    if (r) return r;
  } else {
    attempts.push({ provider: 'distro', origin: "Debian's source archive", error: 'not tried: busybox.fallback is none' });
  }

  const lines = attempts.map((a) => `  ${a.provider} ${a.origin}: ${a.error}`);
  throw new DomuError(`busybox ${input.version}: no provider could supply the tarball (${attempts.length} tried)\n${lines.join('\n')}`, {
    hint: input.strictVersion || input.fallback === 'none'
      ? 'pass --source PATH|URL with the release tarball, or allow the distribution fallback (drop --strict-version, busybox.fallback: distro)'
      : 'pass --source PATH|URL with the release tarball, or add a reachable mirror under busybox.mirrors',
  });
}

function substitutionText(s: NonNullable<SourceOutput['substitution']>): string {
  return `busybox ${s.requested} was requested but ${s.used} is used instead: ${s.reason}; source: ${s.from}`;
}

async function fromDistro(input: SourceInput, want: string, ctx: StageContext, done: (t: string, s: string, o: Origin, hit: boolean) => SourceOutput): Promise<SourceOutput> {
  const scratch = tempPathFor(join(ctx.cache.root, 'apt', 'source'));
  await mkdir(scratch, { recursive: true });
  const release = ctx.cleanup.tempPath(scratch);
  try {
    const apt = await makePrivateApt(join(scratch, 'apt'), input.aptEtc);
    ctx.log.info("distribution fallback: reading Debian's source index (private apt configuration)");
    await aptUpdate(ctx, apt);
    const versions = await showSource(ctx, apt, 'busybox');
    if (!versions.length) throw new ProviderMiss("Debian's source archive has no busybox source package");
    const offered = [...new Set(versions.map((v) => v.upstream))].join(', ');
    const exact = versions.find((v) => v.upstream === input.version);
    let chosen: SourceVersion;
    let sha = want;
    let substitution: SourceOutput['substitution'];
    if (exact) {
      chosen = exact;
    } else {
      if (input.strictVersion) throw new ProviderMiss(`Debian's source archive has busybox ${offered} only; --strict-version forbids substituting another version`);
      const table = knownReleases();
      const usable = versions.filter((v) => table.has(v.upstream)).sort((a, b) => compareVersions(b.upstream, a.upstream));
      if (!usable.length) throw new ProviderMiss(`Debian's source archive has busybox ${offered}, none of them in the table of known releases (${RELEASES_FILE})`);
      chosen = usable[0]!;
      sha = table.get(chosen.upstream)!.sha256;
      substitution = {
        requested: input.version,
        used: chosen.upstream,
        reason: `busybox ${input.version} could not be downloaded and Debian's source archive has ${offered}`,
        from: `Debian source package busybox ${chosen.version} (${chosen.orig?.name ?? 'orig tarball'})`,
      };
    }
    if (chosen.orig && chosen.orig.sha256 !== sha) {
      throw new DomuError(`Debian's busybox ${chosen.version} orig tarball has sha256 ${chosen.orig.sha256}, but busybox ${chosen.upstream} is pinned to ${sha}`, {
        hint: 'Debian repacked the tarball; use --source with the upstream release',
      });
    }
    const origin: Origin = { version: chosen.upstream, provider: 'distro', origin: `debian:busybox=${chosen.version}`, substitution };
    const cached = await fromCache(ctx, sha);
    const tarball = cached
      ? cached.tarball
      : await storeEntry(ctx, sha, chosen.upstream, origin, async (dest) => {
          const dl = join(scratch, 'dl');
          await mkdir(dl, { recursive: true });
          const got = await downloadOrigTarball(ctx, apt, chosen, dl);
          await verifySha256(got, sha, `debian:busybox=${chosen.version}`);
          await copyFile(got, dest);
        });
    if (substitution) await writeMemo(ctx, input.version, { sha256: sha, at: Date.now(), substitution, origin: origin.origin });
    return done(tarball, sha, origin, false);
  } finally {
    await rm(scratch, { recursive: true, force: true });
    release();
  }
}

// ---- cache layout: sources/<sha256>/{busybox-<version>.tar.bz2, origin.json} ----

/**
 * The cached tarball of `sha`, proved: the entry against its manifest, and the tarball against
 * the pinned sha256 (the entry's name). A corrupt entry is discarded with a warning, and its
 * problem is noted in `attempts` so that a run that then finds no provider says what happened.
 */
async function fromCache(ctx: StageContext, sha: string, attempts?: SourceOutput['attempts']): Promise<{ tarball: string; origin: Origin } | undefined> {
  let found: { tarball: string; origin: Origin } | undefined;
  const dir = await ctx.cache.lookup('sources', sha, {
    log: ctx.log,
    redo: 'fetching the tarball again',
    onCorrupt: (reason) => attempts?.push({ provider: 'cache', origin: ctx.cache.entryPath('sources', sha), error: `corrupt (${reason}); discarded` }),
    // The lookup hashed every file against the manifest; the manifest's hash of the tarball must
    // then be the pinned one.
    check: async (d) => {
      let origin: Origin;
      try {
        origin = JSON.parse(await readFile(join(d, 'origin.json'), 'utf8')) as Origin;
        if (typeof origin.version !== 'string' || typeof origin.provider !== 'string' || typeof origin.origin !== 'string') throw new Error('bad origin.json');
      } catch {
        return 'origin.json unreadable';
      }
      const tarball = join(d, tarballName(origin.version));
      const actual = manifestFileSha256(d, tarballName(origin.version)) ?? 'missing';
      if (actual !== sha) return `${tarballName(origin.version)}: sha256 ${actual}, not the pinned ${sha}`;
      found = { tarball, origin };
      return undefined;
    },
  });
  return dir ? found : undefined;
}

async function storeEntry(ctx: StageContext, sha: string, version: string, origin: Origin, fill: (dest: string) => Promise<void>): Promise<string> {
  const dir = await ctx.cache.store(
    'sources',
    sha,
    async (tmp) => {
      await fill(join(tmp, tarballName(version)));
      const record = { version: origin.version, provider: origin.provider, origin: origin.origin, fetchedAt: new Date().toISOString() };
      await writeFile(join(tmp, 'origin.json'), JSON.stringify(record, null, 2));
    },
    (tmp) => ctx.cleanup.tempPath(tmp),
    { log: ctx.log, redo: 'replacing it' },
  );
  return join(dir, tarballName(version));
}

async function storeDownload(ctx: StageContext, url: string, sha: string, version: string, origin: Origin): Promise<string> {
  return storeEntry(ctx, sha, version, origin, async (dest) => {
    ctx.log.info(`downloading ${url}`);
    await download({
      url,
      dest,
      expectedSha256: sha,
      signal: ctx.signal,
      log: ctx.log,
      retries: 2,
      onProgress: (got, total) => ctx.progress(`${(got / 1048576).toFixed(1)}${total ? ` / ${(total / 1048576).toFixed(1)}` : ''} MiB`),
    });
  });
}

async function storeLocal(ctx: StageContext, path: string, sha: string, version: string, origin: Origin): Promise<string> {
  try {
    if (!(await stat(path)).isFile()) throw new Error('not a regular file');
  } catch (e) {
    throw new InputError(`--source ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : errorMessage(e)}`, 'give the path of a busybox-<version>.tar.bz2 release tarball');
  }
  return storeEntry(ctx, sha, version, origin, async (dest) => {
    await copyFile(path, dest);
    await verifySha256(dest, sha, path);
  });
}

/** Check `file`'s sha256; on mismatch delete it and fail with both hashes. */
async function verifySha256(file: string, sha: string, what: string): Promise<void> {
  const actual = await sha256File(file);
  if (actual !== sha) {
    await rm(file, { force: true });
    // `what` is the user's file (--source) or the download; only our copy in the cache is deleted.
    const fate = what === file ? 'the file was deleted' : 'nothing of it was kept in the cache';
    throw new DomuError(`sha256 mismatch for ${what}: expected ${sha}, got ${actual}; ${fate}`, {
      hint: 'the file is not the pinned release: check the source, or pass --sha256 for an unlisted version',
    });
  }
}

// A remembered substitution lets a repeated build reuse the substituted tarball without asking
// apt again; it expires so that a version that becomes downloadable is picked up later.
const MEMO_TTL_MS = 24 * 3600_000;
const memoPath = (ctx: StageContext, version: string) => join(ctx.cache.root, 'sources', `substitute-${basename(version)}.json`);

interface Memo {
  sha256: string;
  /** ms since the epoch */
  at: number;
  substitution?: SourceOutput['substitution'];
  origin?: string;
}

async function readMemo(ctx: StageContext, version: string): Promise<Memo | undefined> {
  try {
    const m = JSON.parse(await readFile(memoPath(ctx, version), 'utf8')) as Memo;
    return Date.now() - m.at < MEMO_TTL_MS ? m : undefined;
  } catch {
    return undefined;
  }
}

async function writeMemo(ctx: StageContext, version: string, memo: Memo): Promise<void> {
  await writeFileAtomic(memoPath(ctx, version), JSON.stringify(memo));
}
