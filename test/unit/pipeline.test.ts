// The run context's mechanisms, with real processes and real files: exec, cleanup, cache, Run.
import { existsSync, readdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AbortedError, DomuError } from '../../src/lib/errors.js';
import { run } from '../../src/lib/exec.js';
import { memoryLogger } from '../../src/lib/log.js';
import { Cache, defaultCacheDir } from '../../src/pipeline/cache.js';
import { CleanupRegistry } from '../../src/pipeline/cleanup.js';
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
    const files = readdirSync(a);
    expect(files).toHaveLength(50);
    const owners = new Set(await Promise.all(files.map((f) => readFile(join(a, f), 'utf8'))));
    expect(owners.size).toBe(1); // never a mix of the two
    expect(readdirSync(join(dir, 'k'))).toEqual(['same']);
  });

  it('refuses cache addresses that could escape the cache', () => {
    expect(() => new Cache(dir).entryPath('k', '../x')).toThrow(/bad cache address/);
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
});
