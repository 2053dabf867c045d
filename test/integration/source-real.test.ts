// The real distribution fallback: Debian's source archive through apt with a private
// configuration (upstream busybox.net is not reachable from these machines, so the upstream
// provider fails for real first). Each case starts from an empty cache.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sha256File } from '../../src/core/hash.js';
import { sourceStage, type SourceInput } from '../../src/stages/source.js';
import { BUSYBOX_1_35_SHA256 } from '../helpers/busybox-tarball.js';
import { makeTestContext, type TestContext } from '../helpers/context.js';

let ctx: TestContext;
beforeEach(async () => {
  ctx = await makeTestContext();
});
afterEach(async () => {
  await ctx.dispose();
});

const input = (version: string, over: Partial<SourceInput> = {}): SourceInput => ({
  version,
  mirrors: [],
  fallback: 'distro',
  strictVersion: false,
  ...over,
});

const aptSnapshot = () => ({
  sources: readdirSync('/etc/apt/sources.list.d').map((n) => [n, statSync(join('/etc/apt/sources.list.d', n)).mtimeMs]),
  lists: existsSync('/var/lib/apt/lists') ? readdirSync('/var/lib/apt/lists').filter((n) => /Sources$/.test(n)) : [],
});

describe("busybox from Debian's source archive", () => {
  it('1.35.0: the exact release, sha256 pinned, no substitution, system apt untouched', async () => {
    const before = aptSnapshot();
    const r = await sourceStage(input('1.35.0'), ctx);
    expect(r.provider).toBe('distro');
    expect(r.resolvedVersion).toBe('1.35.0');
    expect(r.substitution).toBeUndefined();
    expect(r.origin).toMatch(/^debian:busybox=1:1\.35\.0-/);
    expect(r.sha256).toBe(BUSYBOX_1_35_SHA256);
    expect(await sha256File(r.tarball)).toBe(BUSYBOX_1_35_SHA256);
    expect(r.attempts.map((a) => a.provider)).toEqual(['cache', 'upstream']);
    expect(aptSnapshot()).toEqual(before);
    // the private apt scratch directory is gone
    expect(readdirSync(join(ctx.cache.root, 'apt'))).toEqual([]);
    const origin = JSON.parse(await readFile(join(ctx.cache.root, 'sources', BUSYBOX_1_35_SHA256, 'origin.json'), 'utf8')) as { provider: string };
    expect(origin.provider).toBe('distro');
  });

  it('1.22.1: substitutes 1.35.0 and says which, why and from where; the next run reuses it from the cache', async () => {
    const r = await sourceStage(input('1.22.1'), ctx);
    expect(r.requestedVersion).toBe('1.22.1');
    expect(r.resolvedVersion).toBe('1.35.0');
    expect(r.sha256).toBe(BUSYBOX_1_35_SHA256);
    expect(r.substitution).toMatchObject({ requested: '1.22.1', used: '1.35.0' });
    expect(r.substitution!.reason).toMatch(/busybox 1\.22\.1 could not be downloaded and Debian's source archive has 1\.35\.0/);
    expect(r.substitution!.from).toMatch(/Debian source package busybox 1:1\.35\.0-.* \(busybox_1\.35\.0\.orig\.tar\.bz2\)/);
    expect(ctx.lines.some((l) => l.startsWith('warn') && /busybox 1\.22\.1 was requested but 1\.35\.0 is used instead/.test(l))).toBe(true);

    const again = await sourceStage(input('1.22.1'), ctx);
    expect(again.cacheHit).toBe(true);
    expect(again.resolvedVersion).toBe('1.35.0');
    expect(again.substitution?.used).toBe('1.35.0');
  });

  it('1.22.1 under --strict-version: fails listing every provider tried and its error', async () => {
    const err = (await sourceStage(input('1.22.1', { strictVersion: true }), ctx).catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(Error);
    const lines = err.message.split('\n');
    expect(lines[0]).toBe('busybox 1.22.1: no provider could supply the tarball (3 tried)');
    expect(lines[1]).toMatch(/^ {2}cache .*: not cached$/);
    expect(lines[2]).toMatch(/^ {2}upstream https:\/\/busybox\.net\/downloads\/busybox-1\.22\.1\.tar\.bz2: .+/);
    expect(lines[3]).toMatch(/^ {2}distro Debian's source archive: Debian's source archive has busybox 1\.35\.0 only; --strict-version forbids substituting another version$/);
    const sources = join(ctx.cache.root, 'sources');
    expect(existsSync(sources) ? readdirSync(sources) : []).toEqual([]); // nothing half-fetched
  });
});
