// The image stage against real file systems: an output directory on a small tmpfs (no space),
// and the on-disk size of a 1 GiB sparse image of a busybox-sized tree.
import { busyboxLikeTree } from '../helpers/trees.js';
import { writeFileSync, statfsSync } from 'node:fs';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DomuError } from '../../src/core/errors.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';
import { imageStage, type DeviceNode, type ImageInput } from '../../src/stages/image.js';
import { makeTestContext, tempDir, type TestContext } from '../helpers/context.js';

const isRoot = process.getuid?.() === 0;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
const DEVICES: DeviceNode[] = [
  { path: '/dev/console', type: 'c', mode: 0o600, uid: 0, gid: 0, major: 5, minor: 1 },
  { path: '/dev/null', type: 'c', mode: 0o666, uid: 0, gid: 0, major: 1, minor: 3 },
];


function input(staging: string, output: string, over: Partial<ImageInput> = {}): ImageInput {
  return { staging, devices: DEVICES, output, size: GiB, label: 'busybox', populate: 'rootless', sourceDateEpoch: 1700000000, contentHash: 'c'.repeat(64), ...over };
}

describe.skipIf(!isRoot)('output directory on a small file system', () => {
  let base: string;
  let ctx: TestContext;
  const mounts: string[] = [];

  async function tmpfs(name: string, size: string): Promise<string> {
    const dir = join(base, name);
    await mkdir(dir);
    await run(env, 'mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
    mounts.push(dir);
    return dir;
  }

  beforeAll(async () => {
    base = await tempDir('domu-image-real-');
    ctx = await makeTestContext();
  });

  afterAll(async () => {
    for (const m of mounts.reverse()) await run(env, 'umount', [m]).catch(() => undefined);
    await ctx?.dispose();
    if (base) await rm(base, { recursive: true, force: true });
  });

  it('fails with one clear "no space" error naming the path, leaving nothing behind', async () => {
    const dir = await tmpfs('small', '16m');
    const staging = await busyboxLikeTree(join(base, 'staging-20m'), { randomMiB: 20 });
    const out = join(dir, 'busybox.img');
    const err = await imageStage(input(staging, out), ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DomuError);
    expect((err as Error).message).toMatch(new RegExp(`^no space left on ${dir} \\(the out directory, --out\\) while building the image busybox\\.img: it needs about [\\d.]+ MiB, [\\d.]+ MiB free; nothing was written; free some space there or use --out on a larger file system$`));
    expect(await readdir(dir)).toEqual([]);
    expect(ctx.cleanup.size).toBe(0);
  });

  it('says the same when the space runs out during the build, and removes the temp file', async () => {
    const dir = await tmpfs('shrinking', '64m');
    const staging = await busyboxLikeTree(join(base, 'staging-small'));
    const out = join(dir, 'busybox.img');
    const c = await makeTestContext();
    try {
      // Another writer takes the space between the check and the build.
      const info = c.log.info;
      c.log.info = (msg: string) => {
        info(msg);
        if (msg.startsWith('populating ')) {
          const s = statfsSync(dir);
          writeFileSync(join(dir, 'filler'), Buffer.alloc(s.bavail * s.bsize - 2 * MiB, 1));
        }
      };
      const err = await imageStage(input(staging, out), c).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DomuError);
      expect((err as Error).message).toMatch(new RegExp(`^no space left on ${dir} \\(the out directory, --out\\) while building the image busybox\\.img: it needs about [\\d.]+ MiB, \\d+ KiB free; nothing was left behind; free some space there or use --out on a larger file system$`));
      expect(c.lines.some((l) => l.startsWith('debug $ mke2fs -t'))).toBe(true); // it failed in the build, not the check
      expect(await readdir(dir)).toEqual(['filler']);
      expect(c.cleanup.size).toBe(0);
    } finally {
      await c.dispose();
    }
  });
});

describe('a 1 GiB image of a busybox-sized tree', () => {
  it('is sparse: at most 40 MiB allocated', async () => {
    const c = await makeTestContext();
    try {
      const staging = await busyboxLikeTree(join(c.root, 'staging'));
      const out = await imageStage(input(staging, join(c.root, 'busybox.img')), c);
      const st = await stat(out.path);
      expect(out.apparentBytes).toBe(GiB);
      expect(st.size).toBe(GiB);
      expect(out.allocatedBytes).toBe(st.blocks * 512);
      expect(out.allocatedBytes).toBeLessThanOrEqual(40 * MiB);
      expect(out.files).toBe(14 + 1 + 400 + 20 + DEVICES.length); // dirs, busybox, links, etc files
      c.log.info(`allocated ${(out.allocatedBytes / MiB).toFixed(1)} MiB`);
    } finally {
      await c.dispose();
    }
  });
});
