// Publishing into a real store: a loop-mounted ext4 file system (a mount point, as /scsistore is),
// with real publishers in child processes for the lock, SIGTERM and SIGKILL cases.
import { startPublishChild as startChild, type PublishChild as Child } from '../helpers/publish-driver.js';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { lstat, mkdir, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sha256Sparse } from '../../src/fs/sparse.js';
import { DomuError, InputError } from '../../src/core/errors.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { withHeader } from '../../src/store/genheader.js';
import { memoryLogger } from '../../src/core/log.js';
import { publish, type PublishInput, type PublishOutput } from '../../src/store/publish.js';
import { LOCK_NAME, type LockHolder } from '../../src/store/storelock.js';
import { makeTestContext, tempDir, type TestContext } from '../helpers/context.js';
import type { ChildEvent } from '../helpers/publish-child.js';

const isRoot = process.getuid?.() === 0;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };

const IMAGE = 'busybox.img';
const KERNEL = 'boot/vmlinuz-6.1.0-guest';
const RAMDISK = 'boot/initrd.img-6.1.0-guest';
const CFG1 = 'xen/test1/busybox.cfg';
const CFG2 = 'xen/test2/busybox.cfg';
const FILES = [CFG1, CFG2, KERNEL, RAMDISK, IMAGE];

function domainConfig(host: string, memory: number): string {
  const content = [
    'kernel = "/scsistore/boot/vmlinuz-6.1.0-guest"',
    'ramdisk = "/scsistore/boot/initrd.img-6.1.0-guest"',
    'name = "busybox"',
    `memory = ${memory}`,
    "disk = ['file:/scsistore/busybox.img,xvda,w']",
    `vif = ['bridge=xenbr0']  # ${host}`,
    '',
  ].join('\n');
  return withHeader(content, { generator: 'domu-builder', version: '0.1.0', source: 'xen-configs/domain.cfg.hbs', style: '#' });
}

/** A 1 GiB sparse image with 35 MiB of random data spread over it. */
async function writeImage(path: string): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.truncate(GiB);
    for (let i = 0; i < 35; i++) await fh.write(randomBytes(MiB), 0, MiB, i * 29 * MiB + (i % 3) * 4096);
  } finally {
    await fh.close();
  }
}

/** out/ of version 1, and version 2: a new image, more memory in test1's config, the rest equal. */
async function makeOuts(lab: string): Promise<{ v1: string; v2: string }> {
  const v1 = join(lab, 'out-v1');
  const v2 = join(lab, 'out-v2');
  for (const d of [join(v1, 'boot'), join(v1, 'xen/test1'), join(v1, 'xen/test2')]) await mkdir(d, { recursive: true });
  await writeImage(join(v1, IMAGE));
  await writeFile(join(v1, KERNEL), randomBytes(3 * MiB));
  await writeFile(join(v1, RAMDISK), randomBytes(MiB));
  await writeFile(join(v1, CFG1), domainConfig('test1', 512));
  await writeFile(join(v1, CFG2), domainConfig('test2', 512));
  await run(env, 'cp', ['-a', '--sparse=always', '--', v1, v2]);
  await writeImage(join(v2, IMAGE));
  await writeFile(join(v2, CFG1), domainConfig('test1', 768));
  return { v1, v2 };
}

type Hashes = Record<string, string>;

async function hashes(dir: string, rels: string[] = FILES): Promise<Hashes> {
  const out: Hashes = {};
  for (const rel of rels) out[rel] = await sha256Sparse(env, join(dir, rel));
  return out;
}

interface Entry {
  ino: number;
  mtimeMs: number;
  size: number;
}

/** Every name below `dir` (but lost+found) with its inode, mtime and size. */
async function snapshot(dir: string, prefix = ''): Promise<Record<string, Entry>> {
  const out: Record<string, Entry> = {};
  for (const n of (await readdir(join(dir, prefix))).sort()) {
    const rel = prefix ? `${prefix}/${n}` : n;
    if (rel === 'lost+found') continue;
    const st = await lstat(join(dir, rel));
    if (st.isDirectory()) Object.assign(out, await snapshot(dir, rel));
    else out[rel] = { ino: st.ino, mtimeMs: st.mtimeMs, size: st.size };
  }
  return out;
}

async function tempsIn(dir: string): Promise<string[]> {
  return Object.keys(await snapshot(dir)).filter((p) => p.split('/').pop()!.startsWith('.tmp-'));
}

async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

/** A pid that certainly does not run any more. */
async function deadPid(): Promise<number> {
  const c = execa('true');
  await c;
  return c.pid!;
}

async function writeLock(store: string, holder: LockHolder): Promise<void> {
  await writeFile(join(store, LOCK_NAME), `${JSON.stringify(holder)}\n`);
}

// ---------------------------------------------------------------------------------------------
// Publishers in child processes

function finalEvent(c: Child): ChildEvent | undefined {
  return c.events.find((e) => 'event' in e && (e.event === 'done' || e.event === 'error'));
}

function outputOf(c: Child): PublishOutput {
  const e = finalEvent(c);
  if (!e || !('event' in e) || e.event !== 'done') throw new Error(`the child did not succeed: ${JSON.stringify(e)}\n${c.events.map((x) => JSON.stringify(x)).join('\n')}`);
  return e.output as PublishOutput;
}

// ---------------------------------------------------------------------------------------------

describe.skipIf(!isRoot)('publish into a loop-mounted ext4 store', () => {
  let lab: string;
  let store: string;
  let outs: { v1: string; v2: string };
  let h1: Hashes;
  let h2: Hashes;
  let ctx: TestContext;

  const input = (outDir: string, over: Partial<PublishInput> = {}): PublishInput => ({ outDir, store, files: FILES, image: IMAGE, lockTimeoutMs: 10_000, ...over });

  beforeAll(async () => {
    lab = await tempDir('domu-publish-');
    const backing = join(lab, 'store.ext4');
    const fh = await open(backing, 'w');
    await fh.truncate(GiB);
    await fh.close();
    await run(env, 'mke2fs', ['-q', '-t', 'ext4', '-F', backing]);
    store = join(lab, 'scsistore');
    await mkdir(store);
    await run(env, 'mount', ['-o', 'loop', backing, store]);
    outs = await makeOuts(lab);
    h1 = await hashes(outs.v1);
    h2 = await hashes(outs.v2);
  });

  afterAll(async () => {
    if (store) await run(env, 'umount', [store]).catch(() => run(env, 'umount', ['-l', store]));
    if (lab) await rm(lab, { recursive: true, force: true });
  });

  beforeEach(async () => {
    for (const n of await readdir(store)) if (n !== 'lost+found') await rm(join(store, n), { recursive: true, force: true });
    ctx = await makeTestContext();
    return () => ctx.dispose();
  });

  it('first publish writes everything, image and boot files before the configs, and keeps the image sparse', async () => {
    const out = await publish(input(outs.v1), ctx);
    expect(out.written).toEqual([IMAGE, KERNEL, RAMDISK, CFG1, CFG2]);
    expect(out.unchanged).toEqual([]);
    expect(out.previousImage).toBeUndefined();
    expect(await hashes(store)).toEqual(h1);
    expect((await stat(join(store, IMAGE))).size).toBe(GiB);
    expect(await allocated(join(store, IMAGE))).toBeLessThan(40 * MiB);
    expect(Object.keys(await snapshot(store)).sort()).toEqual([...FILES].sort()); // no lock, no temps, no probe
    expect(ctx.cleanup.size).toBe(0);
  });

  it('a second identical publish writes nothing and touches nothing', async () => {
    await publish(input(outs.v1), ctx);
    const before = await snapshot(store);
    const out = await publish(input(outs.v1), ctx);
    expect(out.written).toEqual([]);
    expect(out.unchanged.sort()).toEqual([...FILES].sort());
    expect(await snapshot(store)).toEqual(before);
  });

  it('replaces a changed config and the image by rename, keeping the previous image as .prev', async () => {
    await publish(input(outs.v1), ctx);
    const before = await snapshot(store);
    const out = await publish(input(outs.v2), ctx);
    expect(out.written).toEqual([IMAGE, CFG1]);
    expect(out.unchanged.sort()).toEqual([CFG2, KERNEL, RAMDISK].sort());
    expect(out.previousImage).toBe(`${IMAGE}.prev`);
    const after = await snapshot(store);
    expect(after[CFG1]!.ino).not.toBe(before[CFG1]!.ino);
    expect(after[CFG2]).toEqual(before[CFG2]);
    // The old image file itself (which a running domain may hold open) lives on as .prev.
    expect(after[`${IMAGE}.prev`]!.ino).toBe(before[IMAGE]!.ino);
    expect(await hashes(store)).toEqual(h2);
    expect(await sha256Sparse(env, join(store, `${IMAGE}.prev`))).toBe(h1[IMAGE]);
    expect(await allocated(join(store, IMAGE))).toBeLessThan(40 * MiB);
    // A third version replaces the older .prev.
    const again = await publish(input(outs.v1), ctx);
    expect(again.written).toEqual([IMAGE, CFG1]);
    expect(await sha256Sparse(env, join(store, `${IMAGE}.prev`))).toBe(h2[IMAGE]);
  });

  it('refuses, before writing anything, when generated files were edited or replaced by hand', async () => {
    await publish(input(outs.v1), ctx);
    await writeFile(join(store, CFG1), `${await readFile(join(store, CFG1), 'utf8')}cpus = "2"\n`);
    await writeFile(join(store, CFG2), 'name = "busybox"  # written by hand\n');
    const before = await snapshot(store);
    const err = await publish(input(outs.v2), ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    const msg = (err as Error).message;
    expect(msg.split('\n')).toHaveLength(1);
    expect(msg).toContain('2 files');
    expect(msg).toContain(CFG1);
    expect(msg).toContain(CFG2);
    expect((err as InputError).hint).toMatch(/--force/);
    expect(await snapshot(store)).toEqual(before); // not even the image, and the lock is released
    expect(ctx.cleanup.size).toBe(0);
  });

  it('with force keeps the hand-edited files as .bak and writes the new ones', async () => {
    await publish(input(outs.v1), ctx);
    const edited = `${await readFile(join(store, CFG1), 'utf8')}cpus = "2"\n`;
    await writeFile(join(store, CFG1), edited);
    await writeFile(join(store, CFG2), 'by hand\n');
    const out = await publish(input(outs.v2, { force: true }), ctx);
    expect(out.backups.sort()).toEqual([`${CFG1}.bak`, `${CFG2}.bak`]);
    expect(out.written).toEqual([IMAGE, CFG1, CFG2]);
    expect(await readFile(join(store, `${CFG1}.bak`), 'utf8')).toBe(edited);
    expect(await readFile(join(store, `${CFG2}.bak`), 'utf8')).toBe('by hand\n');
    expect(await hashes(store)).toEqual(h2);
    expect(ctx.lines.filter((l) => l.startsWith('warn') && l.includes('.bak'))).toHaveLength(2);
  });

  it('refuses a store that is not a mount point unless allowUnmounted, and one that is not a directory', async () => {
    const local = join(store, 'local');
    await mkdir(local);
    const err = await publish(input(outs.v1, { store: local }), ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toContain(`the store ${local} is not a mount point`);
    expect((err as InputError).hint).toContain('--allow-unmounted');
    expect(await readdir(local)).toEqual([]);

    const out = await publish(input(outs.v1, { store: local, allowUnmounted: true }), ctx);
    expect(out.written).toHaveLength(FILES.length);
    expect(await hashes(local)).toEqual(h1);

    const file = join(local, CFG1);
    await expect(publish(input(outs.v1, { store: file }), ctx)).rejects.toThrow(`the store ${file} is not a directory`);
    await expect(publish(input(outs.v1, { store: join(lab, 'nowhere') }), ctx)).rejects.toThrow(/is not a directory \(it does not exist\)/);
  });

  it('refuses a store mounted read-only', async () => {
    await publish(input(outs.v1), ctx);
    await run(env, 'mount', ['-o', 'remount,ro', store]);
    try {
      const err = await publish(input(outs.v2), ctx).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InputError);
      expect((err as Error).message).toBe(`the store ${store} is not writable (read-only file system)`);
      expect((err as InputError).hint).toMatch(/remount,rw/);
    } finally {
      await run(env, 'mount', ['-o', 'remount,rw', store]);
    }
    expect(await hashes(store)).toEqual(h1);
  });

  it('two concurrent publishers: the second waits for the first, both succeed, the store ends consistent', async () => {
    const a = startChild({ input: input(outs.v1), pauseAfterLock: true });
    await a.waitFor((e) => 'event' in e && e.event === 'locked');
    const b = startChild({ input: input(outs.v2) });
    const waiting = await b.waitFor((e) => 'log' in e && e.msg.startsWith('waiting for the store lock'));
    expect('msg' in waiting && waiting.msg).toContain(`host ${hostname()} pid ${a.pid}`);
    // A holds the lock and has written nothing yet (B's probe and lock attempts are dot files).
    expect(Object.keys(await snapshot(store)).filter((n) => !n.startsWith('.'))).toEqual([]);
    expect(await readdir(store)).toContain(LOCK_NAME);
    a.resume();
    expect((await a.exit).exitCode).toBe(0);
    expect((await b.exit).exitCode).toBe(0);
    expect(outputOf(a).written).toEqual([IMAGE, KERNEL, RAMDISK, CFG1, CFG2]);
    expect(outputOf(b).written).toEqual([IMAGE, CFG1]);
    expect(outputOf(b).lockWaitMs).toBeGreaterThan(0);
    expect(await hashes(store)).toEqual(h2);
    expect(await sha256Sparse(env, join(store, `${IMAGE}.prev`))).toBe(h1[IMAGE]);
    expect(Object.keys(await snapshot(store)).sort()).toEqual([...FILES, `${IMAGE}.prev`].sort());
  });

  it('takes over a lock of a dead process of this host, with a warning', async () => {
    const pid = await deadPid();
    await writeLock(store, { host: hostname(), pid, started: '2025-01-02T03:04:05.000Z', command: 'domu build --publish' });
    const out = await publish(input(outs.v1), ctx);
    expect(out.written).toHaveLength(FILES.length);
    expect(ctx.lines.filter((l) => l.startsWith('warn'))).toEqual([expect.stringContaining(`took over the store lock ${join(store, LOCK_NAME)} from host ${hostname()} pid ${pid} (since 2025-01-02T03:04:05.000Z`)]);
    expect(await readdir(store)).not.toContain(LOCK_NAME);
  });

  it('two publishers finding the same stale lock: exactly one takes it over, the other waits for it', async () => {
    const pid = await deadPid();
    await writeLock(store, { host: hostname(), pid, started: '2025-01-02T03:04:05.000Z', command: 'domu build --publish' });
    const [a, b] = [startChild({ input: input(outs.v1), waitBeforeStart: true }), startChild({ input: input(outs.v1), waitBeforeStart: true })];
    for (const c of [a, b]) await c.waitFor((e) => 'event' in e && e.event === 'ready');
    a.resume();
    b.resume();
    expect([(await a.exit).exitCode, (await b.exit).exitCode]).toEqual([0, 0]);
    const warnings = [...a.events, ...b.events].filter((e) => 'log' in e && e.log === 'warn');
    expect(warnings).toEqual([{ log: 'warn', msg: expect.stringContaining(`took over the store lock ${join(store, LOCK_NAME)} from host ${hostname()} pid ${pid}`) }]);
    expect([outputOf(a).written.length, outputOf(b).written.length].sort()).toEqual([0, FILES.length]);
    expect(await hashes(store)).toEqual(h1);
    expect(await readdir(store)).not.toContain(LOCK_NAME);
  });

  it('never breaks a lock of another host: fails after the time-out naming host, pid and start', async () => {
    const holder = { host: 'test2', pid: 4242, started: '2025-01-02T03:04:05.000Z', command: 'domu build --publish' };
    await writeLock(store, holder);
    const lock = await readFile(join(store, LOCK_NAME), 'utf8');
    const err = await publish(input(outs.v1, { lockTimeoutMs: 300 }), ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DomuError);
    const msg = (err as Error).message;
    expect(msg).toContain('locked by host test2 pid 4242 (since 2025-01-02T03:04:05.000Z');
    expect(msg).toContain(`if test2 is down and nothing publishes there, remove ${join(store, LOCK_NAME)} by hand`);
    expect(await readFile(join(store, LOCK_NAME), 'utf8')).toBe(lock);
    expect(Object.keys(await snapshot(store))).toEqual([LOCK_NAME]);
    expect(ctx.lines.some((l) => l.startsWith('info waiting for the store lock'))).toBe(true);

    // A live process of this host is waited for too, and named.
    await writeLock(store, { ...holder, host: hostname(), pid: process.pid });
    await expect(publish(input(outs.v1, { lockTimeoutMs: 200 }), ctx)).rejects.toThrow(`that process still runs on this host: wait for it to finish (or stop pid ${process.pid})`);
  });

  it('SIGTERM mid-copy: the temporary file is removed and the lock released; the store keeps the old set', async () => {
    await publish(input(outs.v1), ctx);
    const before = await snapshot(store);
    const c = startChild({ input: input(outs.v2), pauseInCopy: IMAGE });
    await c.waitFor((e) => 'event' in e && e.event === 'copying');
    expect(await tempsIn(store)).toHaveLength(1);
    c.kill('SIGTERM');
    expect((await c.exit).exitCode).toBe(143);
    expect(finalEvent(c)).toMatchObject({ event: 'error', message: expect.stringContaining('interrupted by SIGTERM') });
    expect(await snapshot(store)).toEqual(before);
  });

  it.each([
    ['the image', IMAGE],
    ['a config', CFG1],
  ])('SIGKILL while copying %s: every file stays whole, the next publish takes the stale lock over and completes', async (_what, rel) => {
    await publish(input(outs.v1), ctx);
    const c = startChild({ input: input(outs.v2), pauseInCopy: rel });
    await c.waitFor((e) => 'event' in e && e.event === 'copying');
    c.kill('SIGKILL');
    expect((await c.exit).signal).toBe('SIGKILL');

    // The killed publisher left its lock and a temporary file; every published name is whole.
    const lock = JSON.parse(await readFile(join(store, LOCK_NAME), 'utf8')) as LockHolder;
    expect(lock).toMatchObject({ host: hostname(), pid: c.pid });
    // Every changed file is copied to its temporary name before the first rename: killed in the
    // config's copy, the image's temporary file is there too, and nothing was renamed yet.
    const temps = await tempsIn(store);
    expect(temps).toHaveLength(rel === IMAGE ? 1 : 2);
    expect(temps.some((t) => t.startsWith(`${dirname(rel) === '.' ? '' : `${dirname(rel)}/`}.tmp-${basename(rel)}-${c.pid}-`))).toBe(true);
    const now = await hashes(store);
    expect(now).toEqual(h1); // the complete old set

    const out = await publish(input(outs.v2), ctx);
    expect(ctx.lines.some((l) => l.startsWith('warn took over the store lock') && l.includes(`pid ${c.pid}`))).toBe(true);
    expect(out.written).toEqual([IMAGE, CFG1]);
    expect(await hashes(store)).toEqual(h2);
    expect(await tempsIn(store)).toEqual([]);
    expect(await readdir(store)).not.toContain(LOCK_NAME);
  });
});
