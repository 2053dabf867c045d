// The source stage's providers, in order, against real local HTTP servers and real files.
// (The distribution provider runs for real in test/integration/source-real.test.ts.)
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DomuError, InputError } from '../../src/core/errors.js';
import { sha256 } from '../../src/core/hash.js';
import { expectedSha256, sourceStage, type SourceInput } from '../../src/stages/source.js';
import { makeTestContext, type TestContext } from '../helpers/context.js';
import { serve, type TestServer } from '../helpers/http.js';

const VERSION = '9.9.9'; // not in the table: the tests give --sha256
const body = randomBytes(64 * 1024);
const BODY_SHA = sha256(body);
const NAME = `/busybox-${VERSION}.tar.bz2`;

let ctx: TestContext;
let up: TestServer;
let mirror: TestServer;

const input = (over: Partial<SourceInput> = {}): SourceInput => ({
  version: VERSION,
  sha256: BODY_SHA,
  mirrors: [],
  fallback: 'none',
  strictVersion: false,
  upstreamBase: up.url,
  ...over,
});

beforeEach(async () => {
  ctx = await makeTestContext();
  up = await serve({ [NAME]: body });
  mirror = await serve({ [NAME]: body });
});
afterEach(async () => {
  await up.close();
  await mirror.close();
  await ctx.dispose();
});

/** No temporary names anywhere in the cache after a run. */
function leftovers(): string[] {
  const dir = join(ctx.cache.root, 'sources');
  return existsSync(dir) ? readdirSync(dir).filter((n) => n.startsWith('.tmp-')) : [];
}

describe('known releases', () => {
  it('pins 1.22.1 and 1.35.0 and refuses an unknown version without --sha256', () => {
    expect(expectedSha256('1.22.1')).toBe('ae0b029d0a9e4dd71a077a790840e496dd838998e4571b87b60fed7462b6678b');
    expect(expectedSha256('1.35.0')).toBe('faeeb244c35a348a334f4a59e44626ee870fb07b6884d68c10ae8bc19f83a694');
    expect(() => expectedSha256('1.36.1')).toThrow(InputError);
    expect(() => expectedSha256('1.36.1')).toThrow(/busybox 1\.36\.1 is not in the table of known releases/);
    expect(() => expectedSha256('1.35.0', '00'.repeat(32))).toThrow(/differs from the pinned hash/);
  });
});

describe('provider order', () => {
  it('fetches from upstream, then serves the second run from the cache without a request', async () => {
    const first = await sourceStage(input(), ctx);
    expect(first.provider).toBe('upstream');
    expect(first.cacheHit).toBe(false);
    expect(first.origin).toBe(`${up.url}${NAME}`);
    expect(await readFile(first.tarball)).toEqual(body);
    expect(up.requests).toEqual([NAME]);

    const second = await sourceStage(input(), ctx);
    expect(second.provider).toBe('cache');
    expect(second.cacheHit).toBe(true);
    expect(second.tarball).toBe(first.tarball);
    expect(up.requests).toHaveLength(1);
    expect(leftovers()).toEqual([]);
  });

  it('a local --source comes before upstream', async () => {
    const file = join(ctx.root, 'mine.tar.bz2');
    await writeFile(file, body);
    const r = await sourceStage(input({ source: file }), ctx);
    expect(r.provider).toBe('local');
    expect(r.origin).toBe(file);
    expect(up.requests).toEqual([]);
  });

  it('a --source URL comes before upstream', async () => {
    const r = await sourceStage(input({ source: `${mirror.url}${NAME}` }), ctx);
    expect(r.provider).toBe('url');
    expect(up.requests).toEqual([]);
    expect(mirror.requests).toEqual([NAME]);
  });

  it('falls through to a mirror when upstream answers 404, and records the attempt', async () => {
    const empty = await serve({});
    try {
      const r = await sourceStage(input({ upstreamBase: empty.url, mirrors: [`${mirror.url}/`] }), ctx);
      expect(r.provider).toBe('mirror');
      expect(r.attempts.map((a) => a.provider)).toEqual(['cache', 'upstream']);
      expect(r.attempts[1]!.error).toMatch(/404/);
    } finally {
      await empty.close();
    }
  });

  it('fails listing every provider tried when none works', async () => {
    const empty = await serve({});
    try {
      const err = await sourceStage(input({ upstreamBase: empty.url, mirrors: [empty.url] }), ctx).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DomuError);
      const msg = (err as Error).message;
      expect(msg.split('\n')[0]).toBe(`busybox ${VERSION}: no provider could supply the tarball (4 tried)`);
      expect(msg).toMatch(/cache .*: not cached/);
      expect(msg).toMatch(/upstream http:\/\/127\.0\.0\.1:\d+\/busybox-9\.9\.9\.tar\.bz2: .*404/);
      expect(msg).toMatch(/mirror .*404/);
      expect(msg).toMatch(/distro .*not tried: busybox.fallback is none/);
      expect(leftovers()).toEqual([]);
    } finally {
      await empty.close();
    }
  });
});

describe('integrity', () => {
  it('a sha256 mismatch fails with both hashes, deletes the download and tries no other provider', async () => {
    const bad = await serve({ [NAME]: Buffer.from('not busybox') });
    try {
      const err = await sourceStage(input({ upstreamBase: bad.url, mirrors: [mirror.url] }), ctx).catch((e: unknown) => e);
      expect((err as Error).message).toContain(`expected ${BODY_SHA}, got ${sha256('not busybox')}`);
      expect(mirror.requests).toEqual([]);
      expect(await ctx.cache.lookup('sources', BODY_SHA)).toBeUndefined();
      expect(leftovers()).toEqual([]);
    } finally {
      await bad.close();
    }
  });

  it('a local --source with the wrong content is refused and not cached', async () => {
    const file = join(ctx.root, 'other.tar.bz2');
    await writeFile(file, 'something else');
    await expect(sourceStage(input({ source: file }), ctx)).rejects.toThrow(/sha256 mismatch .*expected .*got /);
    expect(await ctx.cache.lookup('sources', BODY_SHA)).toBeUndefined();
    expect(existsSync(file)).toBe(true); // the user's own file is never deleted
  });

  it('a missing --source file is a bad-input error', async () => {
    await expect(sourceStage(input({ source: join(ctx.root, 'nope.tar.bz2') }), ctx)).rejects.toThrow(/--source .*nope\.tar\.bz2: no such file/);
  });

  it('a damaged cache entry is dropped and fetched again', async () => {
    const first = await sourceStage(input(), ctx);
    await writeFile(first.tarball, 'bit rot');
    const again = await sourceStage(input(), ctx);
    expect(again.provider).toBe('upstream');
    expect(await readFile(again.tarball)).toEqual(body);
    expect(ctx.lines.some((l) => /is corrupt/.test(l))).toBe(true);
  });

  it('--no-cache fetches again', async () => {
    await sourceStage(input(), ctx);
    const again = await sourceStage(input({ noCache: true }), ctx);
    expect(again.provider).toBe('upstream');
    expect(up.requests).toHaveLength(2);
  });
});
