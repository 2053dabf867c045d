// The kernel stage on the real Debian kernel: explicit paths (either one derives the other),
// the running host's kernel (a host root laid out like /boot + /lib/modules), the package
// fallback, and the release checks (the bzImage header against the modules directory's name).
import { copyFile, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/core/errors.js';
import type { KernelPackage } from '../../src/kernel/kernel.js';
import { kernelStage, type KernelInput } from '../../src/stages/kernel.js';
import { TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { makeTestContext, tempDir, type TestContext } from '../helpers/context.js';
import { getKernelPackage } from '../helpers/kernel-package.js';

let kernel: KernelPackage;
let ctx: TestContext;
let dir: string;
const base: KernelInput = { image: 'auto', modules: 'auto', package: 'linux-image-amd64' };

beforeAll(async () => {
  kernel = await getKernelPackage();
  ctx = await makeTestContext({ cacheDir: TEST_CACHE_DIR });
  dir = await tempDir('domu-kernel-stage-');
});
afterAll(async () => {
  await ctx?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function badInput(p: Promise<unknown>): Promise<InputError> {
  const e: unknown = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(InputError);
  return e as InputError;
}

describe('kernelStage', () => {
  it('explicit image: the modules directory is found beside it, release from the bzImage header', async () => {
    const k = await kernelStage({ ...base, image: kernel.image }, ctx);
    expect(k).toEqual({ origin: 'explicit', release: kernel.release, image: kernel.image, modulesDir: kernel.modules });
  });

  it('explicit modules: the image is found beside them', async () => {
    const k = await kernelStage({ ...base, modules: kernel.modules }, ctx);
    expect(k).toEqual({ origin: 'explicit', release: kernel.release, image: kernel.image, modulesDir: kernel.modules });
  });

  it('an image and a modules directory of different releases: an error showing both', async () => {
    const other = join(dir, 'lib', 'modules', '6.1.0-99-amd64');
    await mkdir(join(dir, 'lib', 'modules'), { recursive: true });
    await symlink(kernel.modules, other);
    const e = await badInput(kernelStage({ ...base, image: kernel.image, modules: other }, ctx));
    expect(e.message).toBe(`kernel release mismatch: ${kernel.image} is release ${kernel.release}, but the modules directory is ${other} (release 6.1.0-99-amd64)`);
  });

  it('paths that are not there or not a kernel are bad input', async () => {
    expect((await badInput(kernelStage({ ...base, image: '/nonexistent/vmlinuz' }, ctx))).message).toBe('kernel.image: no such file /nonexistent/vmlinuz');
    expect((await badInput(kernelStage({ ...base, modules: '/nonexistent/lib/modules/1' }, ctx))).message).toBe('kernel.modules: no such directory /nonexistent/lib/modules/1');
    const fake = join(dir, 'vmlinuz-fake');
    await writeFile(fake, Buffer.alloc(8192, 7));
    expect((await badInput(kernelStage({ ...base, image: fake }, ctx))).message).toBe(`kernel.image: ${fake}: not an x86 bzImage (no "HdrS" setup header magic at 0x202)`);
  });

  it('auto on a host with /boot/vmlinuz-$(uname -r) and /lib/modules/$(uname -r): the running kernel', async () => {
    const host = join(dir, 'host');
    await mkdir(join(host, 'boot'), { recursive: true });
    await mkdir(join(host, 'lib', 'modules'), { recursive: true });
    await copyFile(kernel.image, join(host, 'boot', `vmlinuz-${kernel.release}`));
    await symlink(kernel.modules, join(host, 'lib', 'modules', kernel.release));
    const k = await kernelStage({ ...base, hostRoot: host, hostRelease: kernel.release }, ctx);
    expect(k).toEqual({ origin: 'host', release: kernel.release, image: join(host, 'boot', `vmlinuz-${kernel.release}`), modulesDir: join(host, 'lib', 'modules', kernel.release) });
  });

  it('auto on a host without them: the Debian package (from the cache)', async () => {
    const k = await kernelStage({ ...base, hostRoot: join(dir, 'empty-host'), hostRelease: '9.9.9-none' }, ctx);
    expect(k).toMatchObject({ origin: 'package', release: kernel.release, image: kernel.image, modulesDir: kernel.modules, package: kernel.package, version: kernel.version });
    expect(ctx.lines.some((l) => l.includes(`no ${join(dir, 'empty-host', 'boot', 'vmlinuz-9.9.9-none')}`))).toBe(true);
  });
});
