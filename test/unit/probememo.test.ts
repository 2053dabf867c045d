// The probe memo (core/probememo.ts): a kept answer is reused only while every path it depends
// on is unchanged; a changed, added or shadowing file, a damaged memo or a racy answer means the
// program is asked again. The toolchain's memo is checked with the real gcc of this machine.
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { memoryLogger } from '../../src/core/log.js';
import { memoizedProbe, probeMemoSettings } from '../../src/core/probememo.js';
import { includeSearchPath, probeDependencies, probeToolchainMemo } from '../../src/busybox/toolchain.js';
import { tempDir } from '../helpers/context.js';

let dir: string;
beforeAll(async () => {
  dir = await tempDir('domu-probememo-');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
// Files made by a test are seconds old at most: without this they would all be racy.
beforeEach(() => {
  probeMemoSettings.racyMs = 0;
});
afterEach(() => {
  probeMemoSettings.racyMs = 2000;
});

async function fresh(name: string): Promise<{ cache: string; data: string }> {
  const base = join(dir, name);
  await mkdir(join(base, 'data'), { recursive: true });
  return { cache: join(base, 'cache'), data: join(base, 'data') };
}

/** A probe over `files` that counts its calls; its answer is the content of the first file. */
function counting(files: string[]) {
  const calls = { n: 0 };
  const compute = async () => {
    calls.n++;
    return { value: await readFile(files[0]!, 'utf8').catch(() => 'none'), files };
  };
  return { calls, compute };
}

describe('memoizedProbe', () => {
  it('answers from the memo while the files are unchanged, and asks again when one is rewritten', async () => {
    const { cache, data } = await fresh('rewrite');
    const f = join(data, 'tool');
    await writeFile(f, 'v1');
    const { calls, compute } = counting([f]);
    expect(await memoizedProbe(cache, 'p', { k: 1 }, compute)).toBe('v1');
    expect(await memoizedProbe(cache, 'p', { k: 1 }, compute)).toBe('v1');
    expect(calls.n).toBe(1);
    await writeFile(f, 'v2'); // same size: the ctime and mtime tell
    expect(await memoizedProbe(cache, 'p', { k: 1 }, compute)).toBe('v2');
    expect(calls.n).toBe(2);
  });

  it('asks again when a file is added to a recorded directory, or an absent path appears', async () => {
    const { cache, data } = await fresh('dirs');
    const f = join(data, 'tool');
    const absent = join(data, 'sub', 'shadow.h');
    await writeFile(f, 'v1');
    const { calls, compute } = counting([f, data, absent]);
    await memoizedProbe(cache, 'p', {}, compute);
    await memoizedProbe(cache, 'p', {}, compute);
    expect(calls.n).toBe(1);
    await writeFile(join(data, 'other.h'), '');
    await memoizedProbe(cache, 'p', {}, compute);
    expect(calls.n).toBe(2);
    await memoizedProbe(cache, 'p', {}, compute);
    expect(calls.n).toBe(2);
    await mkdir(join(data, 'sub'));
    await writeFile(absent, '');
    await memoizedProbe(cache, 'p', {}, compute);
    expect(calls.n).toBe(3);
  });

  it('keeps one memo per key', async () => {
    const { cache, data } = await fresh('keys');
    const f = join(data, 'tool');
    await writeFile(f, 'v1');
    const { calls, compute } = counting([f]);
    await memoizedProbe(cache, 'p', { k: 1 }, compute);
    await memoizedProbe(cache, 'p', { k: 2 }, compute);
    expect(calls.n).toBe(2);
  });

  it('does not use a damaged memo', async () => {
    const { cache, data } = await fresh('damaged');
    const f = join(data, 'tool');
    await writeFile(f, 'v1');
    const { calls, compute } = counting([f]);
    await memoizedProbe(cache, 'p', {}, compute);
    const [name] = await readdir(join(cache, 'probes'));
    const memo = join(cache, 'probes', name!);
    await writeFile(memo, (await readFile(memo, 'utf8')).replace('"v1"', '"v9"'));
    expect(await memoizedProbe(cache, 'p', {}, compute)).toBe('v1');
    expect(calls.n).toBe(2);
    await writeFile(memo, 'garbage');
    expect(await memoizedProbe(cache, 'p', {}, compute)).toBe('v1');
    expect(calls.n).toBe(3);
  });

  it('keeps no racy answer, and none that names no file', async () => {
    const { cache, data } = await fresh('racy');
    const f = join(data, 'tool');
    await writeFile(f, 'v1');
    probeMemoSettings.racyMs = 60_000; // the file was changed "just now"
    const { calls, compute } = counting([f]);
    await memoizedProbe(cache, 'p', {}, compute);
    await memoizedProbe(cache, 'p', {}, compute);
    expect(calls.n).toBe(2);
    probeMemoSettings.racyMs = 0;
    const none = { n: 0 };
    const nothing = async () => ({ value: ++none.n, files: [] });
    await memoizedProbe(cache, 'q', {}, nothing);
    expect(await memoizedProbe(cache, 'q', {}, nothing)).toBe(2);
  });

  it('answers when the cache cannot be written', async () => {
    const { data } = await fresh('unwritable');
    const f = join(data, 'tool');
    await writeFile(f, 'v1');
    const { compute } = counting([f]);
    expect(await memoizedProbe(join(f, 'not-a-dir'), 'p', {}, compute)).toBe('v1');
  });
});

describe('the toolchain memo', () => {
  it('reads the include search path and lists every directory a shadowing header could appear in', () => {
    const stderr = ['ignoring nonexistent directory "/x"', '#include "..." search starts here:', '#include <...> search starts here:', ' /usr/lib/gcc/x/12/include', ' /usr/include/x86_64-linux-gnu', ' /usr/include', 'End of search list.', ' /not/this'].join('\n');
    const search = includeSearchPath(stderr);
    expect(search).toEqual(['/usr/lib/gcc/x/12/include', '/usr/include/x86_64-linux-gnu', '/usr/include']);
    const deps = probeDependencies(['/usr/include/linux/pkt_sched.h', '/usr/include/x86_64-linux-gnu/bits/wordsize.h'], search);
    for (const d of search) for (const sub of ['', '/linux', '/bits']) expect(deps).toContain(`${d}${sub}`);
    expect(deps).toContain('/usr/include/x86_64-linux-gnu/bits/wordsize.h');
    expect(deps).toContain('/usr/include/x86_64-linux-gnu/bits');
  });

  it('starts no compiler the second time, and asks again when a header in the search path shadows one', async () => {
    const { cache, data } = await fresh('gcc');
    const log = memoryLogger();
    const env = { log, signal: new AbortController().signal };
    const started = () => log.lines.filter((l) => l.includes('$ gcc')).length;
    const first = await probeToolchainMemo(env, cache, { libc: 'glibc' }, ['-I', data]);
    const ran = started();
    expect(ran).toBeGreaterThan(0);
    expect(await probeToolchainMemo(env, cache, { libc: 'glibc' }, ['-I', data])).toEqual(first);
    expect(started()).toBe(ran);
    // A features.h in a directory searched before /usr/include: another glibc as far as gcc knows.
    await writeFile(join(data, 'features.h'), '#define __GLIBC__ 9\n#define __GLIBC_MINOR__ 99\n');
    const shadowed = await probeToolchainMemo(env, cache, { libc: 'glibc' }, ['-I', data]);
    expect(shadowed.glibc).toEqual({ major: 9, minor: 99 });
    expect(started()).toBeGreaterThan(ran);
  });
});
