// Publishing the image onto a LUN (store.disk: lun) with real block devices: a loop device over a
// sparse file is a block device like an iSCSI LUN on a Dom0 (root, losetup). The kernel and the
// other files still go into the store directory; the image goes onto the device, incrementally,
// and is read back. Refusals: a mounted device (EBUSY through O_EXCL), a device too small, a
// missing one (the login hint), one that is neither a block device nor a file.
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { InputError } from '../../src/core/errors.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';
import { sha256Sparse } from '../../src/fs/sparse.js';
import { LUN_CHUNK } from '../../src/store/publish-lun.js';
import { publish, type PublishInput } from '../../src/store/publish.js';
import { makeTestContext, tempDir, type TestContext } from '../helpers/context.js';

const isRoot = process.getuid?.() === 0;
const MiB = 1024 * 1024;
const IMAGE_SIZE = 64 * MiB;
const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
const IMAGE = 'busybox.img';
const KERNEL = 'boot/vmlinuz-6.1.0-guest';
const IQN = 'iqn.2015-02.com.stu31:t1';
const SERVER = '172.16.31.3';

async function sparseFile(path: string, size: number): Promise<string> {
  const fh = await open(path, 'w');
  await fh.truncate(size);
  await fh.close();
  return path;
}

/** `cmp -n size a b`: exit 0 when their first `size` bytes are equal. */
async function sameBytes(a: string, b: string, size = IMAGE_SIZE): Promise<boolean> {
  const r = await run(env, 'cmp', ['-n', String(size), a, b], { okExitCodes: [0, 1], quiet: true });
  return r.exitCode === 0;
}

async function sha256Of(path: string, size = IMAGE_SIZE): Promise<string> {
  const { stdout } = await run(env, 'sh', ['-c', 'head -c "$1" "$2" | sha256sum', 'sh', String(size), path], { quiet: true });
  return stdout.split(' ')[0]!;
}

describe.skipIf(!isRoot)('publish the image onto a LUN', () => {
  let lab: string;
  let out: string;
  let store: string;
  let ctx: TestContext;
  const loops: string[] = [];
  const mounts: string[] = [];

  async function loopOver(file: string): Promise<string> {
    const { stdout } = await run(env, 'losetup', ['--find', '--show', file]);
    const dev = stdout.trim();
    loops.push(dev);
    return dev;
  }

  const input = (device: string, over: Partial<PublishInput> = {}): PublishInput => ({
    outDir: out,
    store,
    files: [KERNEL],
    allowUnmounted: true,
    lockTimeoutMs: 10_000,
    lun: { image: IMAGE, target: { device, iqn: IQN, server: SERVER, guest: 'busybox' } },
    ...over,
  });

  beforeAll(async () => {
    lab = await tempDir('domu-publish-lun-');
    out = join(lab, 'out');
    await mkdir(join(out, 'boot'), { recursive: true });
    await writeFile(join(out, KERNEL), randomBytes(MiB));
  });

  afterAll(async () => {
    if (lab) await rm(lab, { recursive: true, force: true });
  });

  beforeEach(async () => {
    // A sparse image: data in chunks 0, 5, 6 and 40 (one spanning two chunks), holes elsewhere.
    const img = await sparseFile(join(out, IMAGE), IMAGE_SIZE);
    const fh = await open(img, 'r+');
    for (const at of [0, 5 * MiB, 6 * MiB - 4096, 40 * MiB + 12288]) await fh.write(randomBytes(64 * 1024), 0, 64 * 1024, at);
    await fh.close();
    store = join(lab, `store-${Date.now()}`);
    await mkdir(store);
    ctx = await makeTestContext();
  });

  afterEach(async () => {
    for (const m of mounts.splice(0)) await run(env, 'umount', [m]).catch(() => run(env, 'umount', ['-l', m]));
    for (const d of loops.splice(0)) await run(env, 'losetup', ['-d', d]).catch(() => undefined);
    await ctx.dispose();
  });

  it('onto a loop device: reads back equal, the kernel goes into the store, not the image; again: 0 bytes written', async () => {
    // The device starts with garbage where the image has holes: those must become zeros.
    const backing = await sparseFile(join(lab, 'lun-a.img'), 80 * MiB);
    const fh = await open(backing, 'r+');
    await fh.write(randomBytes(MiB), 0, MiB, 20 * MiB);
    await fh.close();
    const dev = await loopOver(backing);
    const first = await publish(input(dev), ctx);
    expect(first.lun).toMatchObject({ device: dev, kind: 'block device', bytesChecked: IMAGE_SIZE, sha256: await sha256Sparse(env, join(out, IMAGE)) });
    // Chunks 0, 5, 6 and 40 carry data; chunk 20 was garbage on the device: 5 chunks differ.
    expect(first.lun!.bytesWritten).toBe(5 * LUN_CHUNK);
    expect(await sameBytes(join(out, IMAGE), dev)).toBe(true);
    expect(first.written).toEqual([KERNEL]);
    expect((await readdir(store)).sort()).toEqual(['boot']);
    expect(ctx.lines.some((l) => l.includes(`onto ${dev}: ${5 * LUN_CHUNK} bytes written, ${IMAGE_SIZE} checked`))).toBe(true);

    const again = await publish(input(dev), ctx);
    expect(again.lun!.bytesWritten).toBe(0);
    expect(again.written).toEqual([]);
    expect(await sameBytes(join(out, IMAGE), dev)).toBe(true);
  });

  it('a changed image writes only the chunks that changed, holes included', async () => {
    const dev = await loopOver(await sparseFile(join(lab, 'lun-b.img'), IMAGE_SIZE));
    await publish(input(dev), ctx);
    const img = join(out, IMAGE);
    const fh = await open(img, 'r+');
    await fh.write(randomBytes(4096), 0, 4096, 30 * MiB + 8192); // a hole chunk gets data
    await fh.close();
    await run(env, 'fallocate', ['--punch-hole', '--offset', String(5 * MiB), '--length', String(MiB), img]); // a data chunk becomes a hole
    const r = await publish(input(dev), ctx);
    expect(r.lun!.bytesWritten).toBe(2 * LUN_CHUNK);
    expect(await sameBytes(img, dev)).toBe(true);
    expect(r.lun!.sha256).toBe(await sha256Of(dev));
  });

  it('a regular file as the LUN (larger than the image): written, its tail left alone', async () => {
    const file = await sparseFile(join(lab, 'lun-file.img'), 72 * MiB);
    const fh = await open(file, 'r+');
    const tail = randomBytes(4096);
    await fh.write(tail, 0, 4096, 70 * MiB);
    await fh.close();
    const r = await publish(input(file), ctx);
    expect(r.lun).toMatchObject({ kind: 'file', bytesChecked: IMAGE_SIZE });
    expect(await sameBytes(join(out, IMAGE), file)).toBe(true);
    const check = await open(file, 'r');
    const buf = Buffer.alloc(4096);
    await check.read(buf, 0, 4096, 70 * MiB);
    await check.close();
    expect(buf.equals(tail)).toBe(true);
  });

  it('a mounted device is refused (EBUSY), left unchanged, nothing written to the store', async () => {
    const dev = await loopOver(await sparseFile(join(lab, 'lun-mounted.img'), IMAGE_SIZE));
    // Read-only, and no lazy inode-table or journal init: a read-write mount lets the kernel write
    // the device on its own (ext4lazyinit, journal commits), and "left unchanged" compares its bytes.
    // A read-only mount claims the device exclusively all the same.
    await run(env, 'mke2fs', ['-q', '-t', 'ext4', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', dev]);
    const mnt = join(lab, 'mnt');
    await mkdir(mnt, { recursive: true });
    await run(env, 'mount', ['-o', 'ro', dev, mnt]);
    mounts.push(mnt);
    const before = await sha256Of(dev);
    const err = await publish(input(dev), ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toBe(`the guest's LUN ${dev} is in use on this Dom0 (EBUSY: mounted, or held by a running domain's blkback, a loop device or device-mapper); nothing was written`);
    expect((err as InputError).hint).toContain('a domain on another Dom0 cannot be seen from here');
    expect(await sha256Of(dev)).toBe(before);
    expect(await readdir(store)).toEqual([]); // no kernel, no lock left
    expect(ctx.cleanup.size).toBe(0);
  });

  it('a device smaller than the image is refused', async () => {
    const dev = await loopOver(await sparseFile(join(lab, 'lun-small.img'), 32 * MiB));
    const err = await publish(input(dev), ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toBe(`the guest's LUN ${dev} is ${32 * MiB} bytes, smaller than the image (${IMAGE_SIZE} bytes); nothing was written`);
    expect(await readdir(store)).toEqual([]);
  });

  it('a missing device is refused with the login hint naming target and server; a character device too', async () => {
    const missing = `/dev/disk/by-path/ip-${SERVER}:3260-iscsi-${IQN}-lun-2`;
    const err = await publish(input(missing), ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toContain(`the guest's LUN ${missing} does not exist: this Dom0 has not logged in to the iSCSI target ${IQN} on ${SERVER}`);
    expect((err as InputError).hint).toBe(`log in first: iscsiadm -m discovery -t st -p ${SERVER}; iscsiadm -m node -T ${IQN} -p ${SERVER} -l (the name then appears), or give the device with --lun-device`);
    await expect(publish(input('/dev/null'), ctx)).rejects.toThrow("the guest's LUN /dev/null is neither a block device nor a regular file; nothing was written");
    expect(await readdir(store)).toEqual([]);
  });
});
