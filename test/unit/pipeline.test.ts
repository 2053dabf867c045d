// The run context's mechanisms, with real processes and real files: exec, cleanup, cache, Run.
import { existsSync, readdirSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { chmod, mkdir, readFile, rm, stat, symlink, truncate, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AbortedError, DomuError } from '../../src/core/errors.js';
import { run } from '../../src/core/exec.js';
import { sha256 } from '../../src/core/hash.js';
import { memoryLogger } from '../../src/core/log.js';
import { MANIFEST_FILE, verifyByHash, verifyByStat } from '../../src/core/manifest.js';
import { Cache, defaultCacheDir } from '../../src/core/cache.js';
import { CleanupRegistry } from '../../src/core/cleanup.js';
import { Run } from '../../src/pipeline/run.js';
import { tempDir } from '../helpers/context.js';

let dir: string;
beforeEach(async () => {
  dir = await tempDir();
});
afterEach(async () => {
  const { rm } = await import('node:fs/promises');
  await rm(dir, { recursive: true, force: true });
});

const env = () => ({ log: memoryLogger(), signal: new AbortController().signal });

describe('exec helper', () => {
  it('runs an argument array without a shell and captures every line into the log', async () => {
    const e = env();
    const r = await run(e, 'printf', ['%s\\n', 'a b', '$(touch nope)', ';rm -rf x']);
    expect(r.stdout.split('\n')).toEqual(['a b', '$(touch nope)', ';rm -rf x']);
    expect(e.log.lines).toContain('debug | $(touch nope)');
    expect(existsSync('nope')).toBe(false);
  });

  it('a non-zero exit names the command and the last error lines', async () => {
    await expect(run(env(), 'sh', ['-c', 'echo bad thing >&2; exit 3'])).rejects.toThrow(/sh -c .*: exit code 3: bad thing/);
  });

  it('a missing program is a clear error', async () => {
    await expect(run(env(), 'no-such-program-domu', [])).rejects.toThrow(/program not found: no-such-program-domu/);
  });

  it('kills the child when the run aborts', async () => {
    const controller = new AbortController();
    const p = run({ log: memoryLogger(), signal: controller.signal }, 'sleep', ['30']);
    setTimeout(() => controller.abort(), 100);
    await expect(p).rejects.toBeInstanceOf(AbortedError);
  });
});

describe('cleanup registry', () => {
  it('undoes innermost first, keeps going after a failure, and skips released entries', async () => {
    const order: string[] = [];
    const c = new CleanupRegistry();
    c.push('outer', () => void order.push('outer'));
    const release = c.push('released', () => void order.push('released'));
    c.push('failing', () => {
      throw new Error('boom');
    });
    c.push('inner', () => void order.push('inner'));
    release();
    const log = memoryLogger();
    const failures = await c.runAll(log);
    expect(order).toEqual(['inner', 'outer']);
    expect(failures).toEqual(['cleanup failed: failing: boom']);
    expect(c.size).toBe(0);
  });
});

describe('cache', () => {
  it('defaults to $XDG_CACHE_HOME/domu, else ~/.cache/domu', () => {
    expect(defaultCacheDir({ XDG_CACHE_HOME: '/x/cache' })).toBe('/x/cache/domu');
    expect(defaultCacheDir({})).toMatch(/\/\.cache\/domu$/);
  });

  it('a producer that fails leaves no entry and no temporary', async () => {
    const cache = new Cache(dir);
    await expect(
      cache.store('k', 'abc', async (tmp) => {
        await writeFile(join(tmp, 'half'), 'x');
        throw new Error('crash');
      }),
    ).rejects.toThrow('crash');
    expect(await cache.lookup('k', 'abc')).toBeUndefined();
    expect(readdirSync(join(dir, 'k'))).toEqual([]);
  });

  it('two producers of the same key at once leave one complete entry', async () => {
    const cache = new Cache(dir);
    const produce = (who: string) => async (tmp: string) => {
      for (let i = 0; i < 50; i++) await writeFile(join(tmp, `f${i}`), who);
    };
    const [a, b] = await Promise.all([cache.store('k', 'same', produce('a')), cache.store('k', 'same', produce('b'))]);
    expect(a).toBe(b);
    const files = readdirSync(a).filter((f) => !f.startsWith('.')); // not the manifest and fingerprint
    expect(files).toHaveLength(50);
    const owners = new Set(await Promise.all(files.map((f) => readFile(join(a, f), 'utf8'))));
    expect(owners.size).toBe(1); // never a mix of the two
    expect(readdirSync(join(dir, 'k'))).toEqual(['same']);
  });

  it('refuses cache addresses that could escape the cache', () => {
    expect(() => new Cache(dir).entryPath('k', '../x')).toThrow(/bad cache address/);
  });
});

describe('cache integrity: manifests', () => {
  // A small entry: a file, a nested file, an executable, a symlink, an empty directory.
  const produce = async (tmp: string) => {
    await mkdir(join(tmp, 'bin'));
    await mkdir(join(tmp, 'empty'));
    await writeFile(join(tmp, 'data'), 'hello world\n');
    await writeFile(join(tmp, 'bin', 'tool'), '#!/bin/sh\necho tool\n', { mode: 0o755 });
    await symlink('tool', join(tmp, 'bin', 'alias'));
  };

  /** A cache whose warnings are collected, with one stored entry `k/e`. */
  async function stored(): Promise<{ cache: Cache; entry: string; warnings: string[] }> {
    const warnings: string[] = [];
    const cache = new Cache(dir, undefined, { warn: (m) => warnings.push(m) });
    const entry = await cache.store('k', 'e', produce);
    return { cache, entry, warnings };
  }

  /** After a corrupt lookup: no entry and no leftover (it was renamed aside and removed). */
  const gone = () => expect(readdirSync(join(dir, 'k'))).toEqual([]);

  it('a stored entry has a manifest of every path; an intact entry is found, with no warning', async () => {
    const { cache, entry, warnings } = await stored();
    const m = JSON.parse(await readFile(join(entry, MANIFEST_FILE), 'utf8')) as { entries: { path: string; type: string; sha256?: string; target?: string }[] };
    expect(m.entries.map((e) => `${e.type} ${e.path}`)).toEqual(['dir bin', 'symlink bin/alias', 'file bin/tool', 'file data', 'dir empty']);
    expect(m.entries.find((e) => e.path === 'data')?.sha256).toBe(sha256('hello world\n'));
    expect(m.entries.find((e) => e.path === 'bin/alias')?.target).toBe('tool');
    expect(await cache.lookup('k', 'e')).toBe(entry);
    expect(await cache.lookup('k', 'e', { verify: 'stat' })).toBe(entry);
    expect(warnings).toEqual([]);
  });

  const cases: [string, (entry: string) => Promise<void>, RegExp][] = [
    ['a file truncated', (e) => truncate(join(e, 'data'), 3), /data: 3 bytes, was 12 bytes/],
    ['a file changed in place (same size, same mtime)', (e) => sameSizeEdit(join(e, 'data')), /data: sha256 differs/],
    ['a file removed', (e) => rm(join(e, 'bin', 'tool')), /bin\/tool: missing/],
    ['a file added', (e) => writeFile(join(e, 'bin', 'extra'), 'x'), /bin\/extra: not in the manifest/],
    ['a symlink pointed elsewhere', async (e) => { await rm(join(e, 'bin', 'alias')); await symlink('/bin/sh', join(e, 'bin', 'alias')); }, /bin\/alias: symlink changed/],
    ['a mode changed', (e) => chmod(join(e, 'bin', 'tool'), 0o644), /bin\/tool: mode 644, was 755/],
    ['the manifest removed (an entry of an older domu)', (e) => rm(join(e, MANIFEST_FILE)), /no manifest: written by an older version of domu/],
    ['the manifest garbled', (e) => writeFile(join(e, MANIFEST_FILE), '{"format": "domu-cache-manifest", "vers'), /manifest garbled/],
  ];
  for (const verify of ['hash', 'stat'] as const) {
    for (const [what, corrupt, reason] of cases) {
      it(`${verify}: ${what} → discarded with a warning naming the entry and the problem`, async () => {
        const { cache, entry, warnings } = await stored();
        await corrupt(entry);
        expect(await cache.lookup('k', 'e', { verify, redo: 'making it again' })).toBeUndefined();
        expect(warnings).toHaveLength(1);
        expect(warnings[0]).toMatch(/^cache entry k\/e is corrupt \(.*\); making it again$/);
        expect(warnings[0]).toMatch(reason);
        gone();
        // and it is produced again as on a miss
        expect(await cache.store('k', 'e', produce)).toBe(entry);
        expect(await cache.lookup('k', 'e', { verify: 'hash' })).toBe(entry);
        expect(await readFile(join(entry, 'data'), 'utf8')).toBe('hello world\n');
      });
    }
  }

  it('stat: an unchanged entry is proved by its fingerprint, without reading a byte', async () => {
    const { entry } = await stored();
    expect(await verifyByStat(entry)).toEqual({ ok: true, by: 'fingerprint', hashedBytes: 0 });
    // A copy (new inodes and ctimes) is hashed in full once, then proved by its new fingerprint.
    const copy = join(dir, 'copy');
    await run(env(), 'cp', ['-a', entry, copy]);
    expect(await verifyByStat(copy)).toMatchObject({ ok: true, by: 'hash' });
    expect(await verifyByStat(copy)).toMatchObject({ ok: true, by: 'fingerprint' });
  });

  it('deferred: only the manifest must exist (the user of the entry proves it in full)', async () => {
    const { cache, entry, warnings } = await stored();
    await sameSizeEdit(join(entry, 'data'));
    expect(await cache.lookup('k', 'e', { verify: 'deferred' })).toBe(entry);
    expect(await cache.lookup('k', 'e', { verify: 'hash' })).toBeUndefined();
    expect(warnings[0]).toMatch(/data: sha256 differs/);
  });

  it("top-level dot names are the cache's or sidecars: not content, not corruption", async () => {
    const { cache, entry, warnings } = await stored();
    await mkdir(join(entry, '.sidecar'));
    await writeFile(join(entry, '.sidecar', 'x.so'), 'added later by a user of the entry');
    expect(await cache.lookup('k', 'e', { verify: 'hash' })).toBe(entry);
    expect(await cache.lookup('k', 'e', { verify: 'stat' })).toBe(entry);
    expect(warnings).toEqual([]);
    // A producer may not put content there.
    await expect(cache.store('k', 'dot', async (tmp) => writeFile(join(tmp, '.hidden'), 'x'))).rejects.toThrow(/reserved for the cache/);
  });

  it("a caller's check makes an intact entry corrupt too (e.g. a tarball that is not the pinned one)", async () => {
    const { cache, warnings } = await stored();
    let told = '';
    expect(await cache.lookup('k', 'e', { check: async () => 'data: not what the key promises', onCorrupt: (r) => (told = r) })).toBeUndefined();
    expect(told).toBe('data: not what the key promises');
    expect(warnings).toEqual(['cache entry k/e is corrupt (data: not what the key promises); rebuilding']);
    gone();
  });

  it('storing over a corrupt entry (another producer was first, or --no-cache) replaces it', async () => {
    const { cache, entry, warnings } = await stored();
    await sameSizeEdit(join(entry, 'data'));
    expect(await cache.store('k', 'e', produce)).toBe(entry);
    expect(warnings[0]).toMatch(/cache entry k\/e is corrupt \(data: sha256 differs\)/);
    expect(await readFile(join(entry, 'data'), 'utf8')).toBe('hello world\n');
    expect(await verifyByHash(entry)).toMatchObject({ ok: true });
  });
});

describe('Run', () => {
  it('records each stage, runs the cleanup registry on failure, and skips the rest', async () => {
    const r = new Run({ mode: 'plain', cacheDir: dir, command: 'test' });
    const undone: string[] = [];
    const err = (await r
      .execute([
        { name: 'one', title: 'one', run: async () => ({ cacheHit: true, outputs: { x: 1 } }) },
        {
          name: 'two',
          title: 'two',
          run: async (ctx) => {
            ctx.cleanup.push('temp a', () => void undone.push('a'));
            ctx.cleanup.push('temp b', () => void undone.push('b'));
            ctx.log.warn('careful');
            throw new DomuError('stage two broke\nsecond line');
          },
        },
        { name: 'three', title: 'three', run: async () => ({ cacheHit: false, outputs: {} }) },
      ])
      .catch((e: unknown) => e)) as Error;
    await r.close();
    expect(err.message).toBe('stage two broke\nsecond line');
    expect(undone).toEqual(['b', 'a']);
    expect(r.records.map((s) => [s.name, s.status])).toEqual([
      ['one', 'cached'],
      ['two', 'failed'],
      ['three', 'skipped'],
    ]);
    expect(r.runLog.warnings).toEqual([{ scope: 'two', message: 'careful' }]);
    expect(await readFile(r.logFile, 'utf8')).toMatch(/warn +\[two\] careful/);
  });

  it('an abort stops the running stage, cleans up and reports AbortedError', async () => {
    const r = new Run({ mode: 'plain', cacheDir: dir, command: 'test' });
    const undone: string[] = [];
    setTimeout(() => r.abort('SIGTERM'), 100);
    const err = await r
      .execute([
        {
          name: 'slow',
          title: 'slow',
          run: async (ctx) => {
            ctx.cleanup.push('loop device', () => void undone.push('loop'));
            await run(ctx, 'sleep', ['30']);
            return { cacheHit: false, outputs: {} };
          },
        },
      ])
      .catch((e: unknown) => e);
    await r.close();
    expect(err).toBeInstanceOf(AbortedError);
    expect((err as Error).message).toMatch(/SIGTERM/);
    expect(undone).toEqual(['loop']);
  });

  it('keeps the ten newest finished run directories and never one of a run still going', async () => {
    // A run still going (a live process), older than all the others: its build tree must stay.
    const live = spawn('sleep', ['30'], { stdio: 'ignore' });
    // Finished runs: pids that do not exist (above pid_max).
    const dead = (i: number) => `2026-01-01T00-00-${String(10 + i).padStart(2, '0')}-000Z-build-${4_194_304 + 1 + i}`;
    const runs = join(dir, 'runs');
    try {
      const old = `2025-12-31T00-00-00-000Z-build-${live.pid}`;
      await mkdir(join(runs, old, 'busybox-1.22.1'), { recursive: true });
      for (let i = 0; i < 15; i++) await mkdir(join(runs, dead(i)), { recursive: true });
      const r = new Run({ mode: 'plain', cacheDir: dir, command: 'test' });
      await r.execute([{ name: 'one', title: 'one', run: async () => ({ cacheHit: true, outputs: {} }) }]);
      await r.close();
      const left = readdirSync(runs).sort();
      // The live run's, this run's own (still going while it prunes), and the ten newest finished ones.
      expect(left).toContain(old);
      expect(existsSync(join(runs, old, 'busybox-1.22.1'))).toBe(true);
      expect(left.filter((n) => n !== old)).toEqual([...Array.from({ length: 10 }, (_, i) => dead(i + 5)), r.workDir.split('/').pop()]);
    } finally {
      live.kill();
    }
  });
});

/** Change one byte of `path` and put its mtime back (to the nanosecond): only the content (and the ctime) differ. */
async function sameSizeEdit(path: string): Promise<void> {
  const before = await stat(path, { bigint: true });
  const ref = `${path}.ref`;
  await writeFile(ref, '');
  await run(env(), 'touch', ['-r', path, ref]);
  const data = await readFile(path);
  data[0] = data[0]! ^ 0x20;
  await writeFile(path, data);
  await run(env(), 'touch', ['-r', ref, path]);
  await rm(ref);
  const after = await stat(path, { bigint: true });
  expect([after.size, after.mtimeNs]).toEqual([before.size, before.mtimeNs]);
  expect(after.ctimeNs).not.toBe(before.ctimeNs);
}
