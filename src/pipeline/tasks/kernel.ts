// Pipeline tasks of the guest kernel: kernel resolution, modules, and the generated ramdisk.
import { count } from '../../core/plural.js';
import { statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { InputError } from '../../core/errors.js';
import { get, isOn, parseConfig } from '../../busybox/kconfig.js';
import { fetchKernelHeaders } from '../../kernel/kbuild.js';
import type { ModuleCompression } from '../../kernel/modinfo.js';
import { INIT_SCRIPT, initramfsStage } from '../../stages/initramfs.js';
import { readBuildRecord } from '../../model/buildrecord.js';
import { fileIdentity, hashOf, ramdiskKey, sameIdentity } from '../uptodate.js';
import { bootNames, epochOf } from './image.js';
import { kernelStage, localBuildDir, type KernelOutput } from '../../stages/kernel.js';
import { modulesStage, resolveModules } from '../../stages/modules.js';
import type { PipelineStage } from '../run.js';
import type { StageContext } from '../../core/context.js';
import { xenType as typeOfGuest, type Description } from '../../model/schema.js';
import type { PlanFlags, PlanState } from '../plan-types.js';

/** What the generated ramdisk loads to mount the root: Xen's block front end and ext4 (its
 * softdep brings crc32c), and virtio for local boot checks under QEMU. */
export const RAMDISK_MODULES = ['xen-blkfront', 'ext4', 'virtio_blk', 'virtio_pci'];

export function kernelTask(desc: Description, state: PlanState, imageOptional = false): PipelineStage {
  if (desc.busybox.cross_compile && desc.kernel.image === 'auto' && desc.kernel.modules === 'auto') {
    // auto means this host's kernel or Debian's amd64 package: modules and a ramdisk for another
    // architecture than the cross-built busybox.
    throw new InputError(
      `busybox.cross_compile is ${desc.busybox.cross_compile}, but kernel.image and kernel.modules are auto (this host's architecture)`,
      'set kernel.image or kernel.modules to a kernel for the guest\'s architecture, or stop with --until compile',
    );
  }
  return {
    name: 'kernel',
    title: 'Resolve the guest kernel',
    run: async (ctx) => {
      const xenType = imageOptional ? undefined : { xenType: typeOfGuest(desc) };
      const k = await kernelStage({ image: desc.kernel.image, modules: desc.kernel.modules, package: desc.kernel.package, imageOptional, ...xenType }, ctx);
      state.kernel = k;
      return { cacheHit: false, note: `${k.release} (${k.origin}${k.package ? ` ${k.package} ${k.version}` : ''})`, outputs: { ...k } };
    },
  };
}

/** Out-of-tree module sources of the description, resolved and checked at plan time. */
export function moduleSources(desc: Description, flags: PlanFlags): string[] {
  return desc.modules.flatMap((m, i) => {
    if (typeof m === 'string') return [];
    const dir = resolve(flags.baseDir ?? process.cwd(), m.source);
    let ok = false;
    try {
      ok = statSync(dir).isDirectory();
    } catch {
      ok = false;
    }
    if (!ok) throw new InputError(`modules.${i}.source: no such directory ${dir}`, 'give the directory of an out-of-tree module (with a Kbuild or Makefile); relative paths start at the description\'s directory');
    return [dir];
  });
}

export const moduleNames = (desc: Description): string[] => desc.modules.filter((m): m is string => typeof m === 'string');

/** Compressions the guest's busybox reads (FEATURE_SEAMLESS_*): such modules stay compressed. */
export function guestLoads(configText: string): Set<ModuleCompression> {
  const k = parseConfig(configText, '.config');
  const out = new Set<ModuleCompression>();
  if (isOn(get(k, 'FEATURE_SEAMLESS_GZ'))) out.add('gzip');
  if (isOn(get(k, 'FEATURE_SEAMLESS_XZ'))) out.add('xz');
  return out;
}

/** The kernel build directory for out-of-tree modules: the kernel's own, else Debian's headers. */
export async function headersFor(k: KernelOutput, ctx: StageContext): Promise<string> {
  const local = k.origin === 'package' ? undefined : await localBuildDir(k);
  return local ?? (await fetchKernelHeaders(ctx, { release: k.release })).buildDir;
}

export function modulesTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const sources = moduleSources(desc, flags);
  const requests = moduleNames(desc);
  return {
    name: 'modules',
    title: 'Resolve and check kernel modules',
    run: async (ctx) => {
      const k = state.kernel!;
      const buildDir = sources.length ? await headersFor(k, ctx) : undefined;
      const m = await modulesStage(
        { release: k.release, modulesDir: k.modulesDir, requests, sources, buildDir, forceVermagic: flags.forceVermagic ?? false, guestLoads: guestLoads(state.kconfig!.config), jobs: flags.jobs },
        ctx,
      );
      state.modules = m;
      const kib = (n: number) => `${Math.round(n / 1024)} KiB`;
      return {
        cacheHit: false,
        note: `${count(m.loadOrder.length, 'module')} (${kib(m.bytes)}): ${m.loadOrder.join(' ') || 'none'}`,
        outputs: { release: m.release, loadOrder: m.loadOrder, modules: m.modules, builtin: m.builtin, warnings: m.warnings, indexSource: m.indexSource, bytes: m.bytes },
      };
    },
  };
}

export function initramfsTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  return {
    name: 'initramfs',
    title: 'Generate the guest ramdisk',
    run: async (ctx) => {
      const k = state.kernel!;
      // The modules tree was indexed by the modules stage of this run: not walked a second time.
      const set = await resolveModules({ release: k.release, modulesDir: k.modulesDir, requests: RAMDISK_MODULES, forceVermagic: flags.forceVermagic ?? false, index: state.modules?.set.index }, ctx);
      const sourceDateEpoch = await epochOf(flags, state);
      const input = {
        busybox: join(state.compile!.installTree, 'bin', 'busybox'),
        release: k.release,
        modules: set.closure.modules.map((m) => ({ name: m.name, file: m.file, path: m.path })),
        output: join(ctx.workDir, 'initramfs', `initrd-${k.release}.gz`),
        sourceDateEpoch,
      };
      // Up to date: the ramdisk in --out/boot was generated from the same inputs and not touched since.
      const out = resolve(flags.outDir ?? 'out');
      state.ramdiskKey = await ramdiskKey({ ...input, initScript: INIT_SCRIPT, hash: hashOf(ctx.cache, flags.noCache) });
      state.previous ??= await readBuildRecord(out);
      const prev = state.previous;
      const placed = join(out, 'boot', bootNames(desc, k.release).ramdisk!);
      if (!flags.noCache && prev?.initramfs && prev.ramdiskKey === state.ramdiskKey && sameIdentity(await fileIdentity(placed), prev.ramdiskFile ?? undefined)) {
        state.initramfs = { ...prev.initramfs, path: placed };
        state.ramdiskUpToDate = true;
        return { cacheHit: true, note: 'up to date', outputs: { ...state.initramfs } };
      }
      const r = await initramfsStage(input, ctx);
      state.initramfs = r;
      return { cacheHit: false, note: `${(r.size / 1048576).toFixed(1)} MiB, ${count(r.modules.length, 'module')}`, outputs: { ...r } };
    },
  };
}

/** kernel.ramdisk given as a path must be a readable file (plan time: exit 2 before any stage). */
export function checkRamdisk(desc: Description, flags: PlanFlags): void {
  const r = desc.kernel.ramdisk;
  if (r === 'generate' || r === 'none') return;
  let ok = false;
  try {
    ok = statSync(resolve(flags.baseDir ?? process.cwd(), r)).isFile();
  } catch {
    ok = false;
  }
  if (!ok) throw new InputError(`kernel.ramdisk: no such file ${r}`, 'give the path of a ramdisk, or generate (the default), or none');
}
