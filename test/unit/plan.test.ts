// Plan-time checks of the kernel, modules and initramfs stages: bad input is exit 2 before any
// stage runs, and the stage list follows the description (--until, kernel.ramdisk).
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/core/errors.js';
import { loadDescription } from '../../src/model/description.js';
import { BUILD_STAGES, planBuild, planModules, type PlanFlags } from '../../src/pipeline/plan.js';
import { tempDir } from '../helpers/context.js';

let dir: string;
beforeAll(async () => {
  dir = await tempDir('domu-plan-');
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const desc = (text: string) => loadDescription({ text });
const flags = (extra: PlanFlags = {}): PlanFlags => ({ outDir: join(dir, 'out'), baseDir: dir, ...extra });

function inputError(f: () => unknown): InputError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(InputError);
    return e as InputError;
  }
  throw new Error('no error');
}

describe('planBuild', () => {
  it('has every designed stage up to the xen configs, in order', () => {
    expect(planBuild(desc(''), flags()).stages.map((s) => s.name)).toEqual([...BUILD_STAGES, 'record']);
    expect(planBuild(desc(''), flags({ until: 'image' })).stages.map((s) => s.name).at(-1)).toBe('image'); // no record of a partial build
    expect(BUILD_STAGES).toEqual(['source', 'extract', 'kconfig', 'compile', 'kernel', 'modules', 'rootfs', 'initramfs', 'image', 'xen configs']);
  });

  it('kernel.ramdisk none or a path: no initramfs stage; a missing ramdisk file is bad input', async () => {
    expect(planBuild(desc('kernel:\n  ramdisk: none\n'), flags()).stages.map((s) => s.name)).not.toContain('initramfs');
    const e = inputError(() => planBuild(desc('kernel:\n  ramdisk: /nonexistent/initrd.img\n'), flags()));
    expect(e.message).toBe('kernel.ramdisk: no such file /nonexistent/initrd.img');
    const mine = join(dir, 'initrd.img');
    await writeFile(mine, 'x');
    expect(planBuild(desc(`kernel:\n  ramdisk: ${mine}\n`), flags()).stages.map((s) => s.name)).not.toContain('initramfs');
  });

  it('an out-of-tree module directory that does not exist is bad input, relative to the description', async () => {
    const e = inputError(() => planBuild(desc('modules: [xen-netfront, { source: ./nope }]\n'), flags()));
    expect(e.message).toBe(`modules.1.source: no such directory ${join(dir, 'nope')}`);
    await mkdir(join(dir, 'mod'), { recursive: true });
    expect(planBuild(desc('modules: [{ source: ./mod }]\n'), flags()).stages.map((s) => s.name)).toContain('modules');
  });

  it('a cross-built busybox with an auto kernel is bad input (unless the build stops at compile)', () => {
    const d = desc('busybox:\n  cross_compile: aarch64-linux-gnu-\n');
    expect(inputError(() => planBuild(d, flags())).message).toMatch(/^busybox\.cross_compile is aarch64-linux-gnu-, but kernel\.image and kernel\.modules are auto/);
    expect(planBuild(d, flags({ until: 'compile' })).stages.map((s) => s.name)).toEqual(['source', 'extract', 'kconfig', 'compile']);
  });
});

describe('planModules', () => {
  it('names from the arguments, else the description; none at all is bad input', () => {
    expect(planModules(desc(''), flags(), ['ext4']).stages.map((s) => s.title)).toEqual(['Resolve the guest kernel', 'Resolve ext4']);
    expect(planModules(desc('modules: [virtio_blk]\n'), flags(), []).stages[1]!.title).toBe('Resolve virtio_blk');
    expect(inputError(() => planModules(desc('modules: []\n'), flags(), [])).message).toBe('no module names: give NAME arguments or a modules: list in the build description');
    expect(inputError(() => planModules(desc(''), flags(), ['bad name'])).message).toBe('module name "bad name": expected a module name or alias like xen-netfront');
  });
});
