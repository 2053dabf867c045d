// The kernel stage on the real Debian kernel: explicit paths (either one derives the other),
// the running host's kernel (a host root laid out like /boot + /lib/modules), the package
// fallback, and the release checks (the bzImage header against the modules directory's name).
import { copyFile, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/core/errors.js';
import type { KernelPackage } from '../../src/kernel/kernel.js';
import { kernelStage, type KernelInput } from '../../src/stages/kernel.js';
import { pvhFromConfig } from '../../src/kernel/pvh.js';
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

// xen.type pvh: the kernel must boot as PVH (CONFIG_XEN_PVH), read from config-<release> beside the
// image, else from the Xen ELF notes of the vmlinux inside the bzImage. The expected verdict is the
// package's own config, not a constant.
describe('kernelStage with xen.type pvh', () => {
  let config: string;
  let expected: boolean;
  /** A root with boot/vmlinuz-<release> (a copy), the modules, and config-<release> when given. */
  async function layout(name: string, configText?: string): Promise<string> {
    const root = join(dir, name);
    await mkdir(join(root, 'boot'), { recursive: true });
    await mkdir(join(root, 'lib', 'modules'), { recursive: true });
    await copyFile(kernel.image, join(root, 'boot', `vmlinuz-${kernel.release}`));
    await symlink(kernel.modules, join(root, 'lib', 'modules', kernel.release));
    if (configText !== undefined) await writeFile(join(root, 'boot', `config-${kernel.release}`), configText);
    return join(root, 'boot', `vmlinuz-${kernel.release}`);
  }
  beforeAll(async () => {
    config = join(kernel.image, '..', `config-${kernel.release}`);
    expected = pvhFromConfig(await readFile(config, 'utf8'));
  });

  it('reads config-<release> beside the image (Debian\'s package has it)', async () => {
    const k = await kernelStage({ ...base, image: kernel.image, xenType: 'pvh' }, ctx);
    expect(k.pvh).toEqual({ pvh: expected, evidence: `${join(kernel.image, '..', `config-${kernel.release}`)}: ${expected ? 'CONFIG_XEN_PVH=y' : 'CONFIG_XEN_PVH is not set'}` });
  });

  it('without a config, the Xen ELF note PHYS32_ENTRY of the vmlinux in the bzImage gives the same verdict', async () => {
    const image = await layout('no-config');
    const k = await kernelStage({ ...base, image, xenType: 'pvh' }, ctx);
    expect(k.pvh?.pvh).toBe(expected);
    expect(k.pvh?.evidence).toContain(`(no config-${kernel.release} beside it)`);
    if (expected) expect(k.pvh?.evidence).toContain('the Xen ELF note PHYS32_ENTRY');
  }, 60_000);

  it('a kernel whose config lacks CONFIG_XEN_PVH is one line naming it and the way out; xen.type pv does not check', async () => {
    const text = (await readFile(config, 'utf8')).replace(/^CONFIG_XEN_PVH=y$/m, '# CONFIG_XEN_PVH is not set');
    const image = await layout('no-pvh', text);
    const e = await badInput(kernelStage({ ...base, image, xenType: 'pvh' }, ctx));
    expect(e.message).toBe(
      `the guest kernel ${kernel.release} (${image}) cannot boot as PVH (xen.type: pvh): ${join(dir, 'no-pvh', 'boot', `config-${kernel.release}`)}: CONFIG_XEN_PVH is not set; use xen.type: pv, or a kernel built with CONFIG_XEN_PVH=y`,
    );
    expect(e.message).not.toContain('\n');
    const pv = await kernelStage({ ...base, image, xenType: 'pv' }, ctx);
    expect(pv.pvh).toBeUndefined();
  });
});
