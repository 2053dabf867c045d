// `domu modules` through the real CLI on the real Debian kernel package: the closure table, the
// JSON report, --kernel as an image, a modules directory or a package, and the error paths.
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KernelPackage } from '../../src/kernel/kernel.js';
import { TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { domu, domuJson } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { getKernelHeaders, getKernelPackage } from '../helpers/kernel-package.js';
import { PROJECT_ROOT } from '../../src/core/paths.js';

let kernel: KernelPackage;
let dir: string;

beforeAll(async () => {
  kernel = await getKernelPackage();
  dir = await tempDir('domu-modules-cli-');
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('domu modules', () => {
  it('--json reports the closure in load order with sizes and vermagic verdicts', async () => {
    const { r, s } = await domuJson(['modules', '--json', '--cache-dir', join(dir, 'cache'), '--kernel', kernel.modules, 'xen-netfront', 'ext4']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(s.ok).toBe(true);
    const m = s.modules!;
    expect(m.release).toBe(kernel.release);
    const names = m.modules.map((x) => x.name);
    expect(names[0]).toBe('xen_netfront');
    expect(names.at(-1)).toBe('ext4');
    expect(names).toEqual(expect.arrayContaining(['jbd2', 'mbcache', 'crc16', 'crc32c_generic']));
    for (const x of m.modules) {
      expect(x.verdict, x.name).toBe('ok');
      expect(x.vermagic).toBe(kernel.release);
      expect(x.size).toBeGreaterThan(1000);
    }
    expect(m.modules.find((x) => x.name === 'xen_netfront')!.depends).toEqual([]);
    expect(m.modules.find((x) => x.name === 'ext4')!.depends).toEqual(['jbd2', 'mbcache', 'crc16']);
    expect(m.requests).toEqual([
      { request: 'xen-netfront', modules: ['xen_netfront'] },
      { request: 'ext4', modules: ['ext4'] },
    ]);
  });

  it('plain output is a table; the kernel image works as --kernel and an alias as a name', async () => {
    const r = await domu(['modules', '--cache-dir', join(dir, 'cache'), '--kernel', kernel.image, 'xennet']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain(`kernel ${kernel.release} (explicit): ${kernel.image}`);
    expect(r.stdout).toMatch(/^ {3}1\. xen_netfront +\d+ KiB {2}vermagic \S+ ok {2}depends - {2}\(requested\)$/m);
  });

  it('a kernel package name as --kernel (the package in the shared test cache)', async () => {
    const { r, s } = await domuJson(['modules', '--json', '--cache-dir', TEST_CACHE_DIR, '--kernel', 'linux-image-amd64', 'xen-blkfront']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect((s.kernel as { origin: string }).origin).toBe('package');
    expect(s.modules!.modules.map((x) => x.name)).toEqual(['xen_blkfront']);
  });

  it('the description\'s modules: list is the default', async () => {
    const config = join(dir, 'guest.yaml');
    await writeFile(config, `kernel:\n  modules: ${kernel.modules}\nmodules: [xen-netfront, virtio_blk]\n`);
    const { r, s } = await domuJson(['modules', '--json', '--config', config, '--cache-dir', join(dir, 'cache')]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(s.modules!.requests.map((q) => q.request)).toEqual(['xen-netfront', 'virtio_blk']);
    expect(s.modules!.modules.map((x) => x.name)).toContain('virtio_ring');
  });

  it('out-of-tree sources of the description are built and checked too', async () => {
    await getKernelHeaders(); // into the shared cache, so the CLI finds them without apt
    const config = join(dir, 'oot.yaml');
    await writeFile(config, `kernel:\n  modules: ${kernel.modules}\nmodules: [xen-netfront, { source: ${join(PROJECT_ROOT, 'test/fixtures/hello-module')} }]\n`);
    const { r, s } = await domuJson(['modules', '--json', '--config', config, '--cache-dir', TEST_CACHE_DIR]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(s.modules!.modules.map((x) => [x.name, x.verdict])).toEqual([
      ['xen_netfront', 'ok'],
      ['crc16', 'ok'],
      ['domu_hello', 'ok'],
    ]);
  }, 180_000);

  it('an unknown module is bad input (exit 2) with a suggestion, one line, no stack', async () => {
    const r = await domu(['modules', '--cache-dir', join(dir, 'cache'), '--kernel', kernel.modules, 'xen-netfrnt']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain(`domu modules: error: no kernel module or alias "xen-netfrnt" in ${kernel.modules}`);
    expect(r.stderr).toContain('hint: did you mean xen_netfront?');
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('a --kernel path that does not exist is bad input', async () => {
    const r = await domu(['modules', '--kernel', '/nonexistent/lib/modules/1.2.3', 'ext4']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('--kernel /nonexistent/lib/modules/1.2.3: no such file or directory');
  });
});
