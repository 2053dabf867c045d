// The modules stage (design.md, "modules"): the requested modules and their closure, checked
// against the guest kernel, laid out for the guest:
//   lib/modules/<release>/<path>     each module of the closure (decompressed unless the guest's
//                                    busybox reads that compression; zstd always decompressed)
//   lib/modules/<release>/modules.dep  kmod's text format, which busybox's modprobe reads
//   lib/modules/<file>.ko            each requested module once more, flat, uncompressed: the
//                                    reference lab's `insmod /lib/modules/xen-netfront.ko`
//   etc/modules                      the load order, which the guest's rcS follows
// Out-of-tree modules (`modules: [{ source: dir }]`) are built with kbuild against the guest
// kernel's headers first and then go through the same closure and checks.
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { moduleClosure, transitiveDepends, type Closure, type ExtraModule } from '../kernel/closure.js';
import { indexModules, type ModuleIndex } from '../kernel/modindex.js';
import { moduleCompression, readModinfo, readModuleBytes, type ModuleCompression } from '../kernel/modinfo.js';
import { checkVermagic, type VermagicVerdict } from '../kernel/vermagic.js';
import { buildExternalModules } from '../kernel/kbuild.js';
import type { StageContext } from '../core/context.js';
import type { ModuleFile } from './rootfs.js';

export interface ModuleSet {
  release: string;
  index: ModuleIndex;
  closure: Closure;
  verdicts: VermagicVerdict[];
}

export interface ResolveModulesInput {
  release: string;
  /** The kernel's modules directory (/lib/modules/<release>). */
  modulesDir: string;
  requests: readonly string[];
  extra?: readonly ExtraModule[];
  forceVermagic?: boolean;
  /** The index of `modulesDir` already read in this run (the ramdisk's modules reuse the guest's). */
  index?: ModuleIndex | undefined;
}

/** Index, closure and vermagic verdicts: what `domu modules` shows and the stages build on. */
export async function resolveModules(input: ResolveModulesInput, ctx: StageContext): Promise<ModuleSet> {
  ctx.progress('indexing modules');
  const index = input.index?.dir === input.modulesDir ? input.index : await indexModules(input.modulesDir, { cache: ctx.cache, env: ctx, progress: ctx.progress });
  ctx.log.info(`modules: ${index.paths.size} modules in ${input.modulesDir} (index from ${index.source}), ${index.builtin.size} built in`);
  const closure = await moduleClosure(index, input.requests, { readInfo: (f) => readModinfo(f, ctx), extra: input.extra });
  for (const w of closure.warnings) ctx.log.warn(w);
  for (const b of closure.builtin) ctx.log.info(`modules: ${b.name} is built into the kernel (${b.via.join(' → ')}): nothing to load`);
  const verdicts = checkVermagic(closure.modules, input.release, { force: input.forceVermagic ?? false, warn: (l) => ctx.log.warn(l) });
  for (const m of closure.modules) {
    ctx.log.info(`modules: ${m.name} ${m.path} depends=[${m.info.depends.join(',')}]${m.info.softdepPre.length ? ` softdep pre=[${m.info.softdepPre.join(',')}]` : ''} vermagic ${m.info.release} (${m.kind}${m.via.length > 1 ? ` via ${m.via.join(' → ')}` : ''})`);
  }
  return { release: input.release, index, closure, verdicts };
}

export interface ModulesInput extends ResolveModulesInput {
  /** Out-of-tree module source directories, built against `buildDir`. */
  sources?: readonly string[];
  /** The kernel build directory (linux-headers) for out-of-tree modules. */
  buildDir?: string | undefined;
  /** Compressions the guest's busybox can load (FEATURE_SEAMLESS_GZ/XZ); others are decompressed. */
  guestLoads?: ReadonlySet<ModuleCompression>;
  jobs?: number | undefined;
}

export interface GuestModule {
  name: string;
  /** Path in the guest, relative to its root. */
  dest: string;
  size: number;
  release: string;
  verdict: VermagicVerdict['verdict'];
  kind: 'requested' | 'depends' | 'softdep';
  via: string[];
}

export interface ModulesOutput {
  release: string;
  /** Files for the rootfs stage (module files, modules.dep, flat copies). */
  files: ModuleFile[];
  /** The text of /etc/modules. */
  etcModules: string;
  /** Load order (module names). */
  loadOrder: string[];
  modules: GuestModule[];
  builtin: string[];
  warnings: string[];
  indexSource: ModuleIndex['source'];
  /** Bytes of module files in the guest (flat copies included). */
  bytes: number;
  set: ModuleSet;
}

/** The guest's file name for a module: compression kept only if the guest can load it. */
function guestPath(path: string, loads: ReadonlySet<ModuleCompression>): string {
  const c = moduleCompression(path);
  return c === 'none' || loads.has(c) ? path : path.replace(/\.(gz|xz|zst)$/, '');
}

export async function modulesStage(input: ModulesInput, ctx: StageContext): Promise<ModulesOutput> {
  const loads = input.guestLoads ?? new Set<ModuleCompression>();
  const requests = [...input.requests];
  const extra: ExtraModule[] = [...(input.extra ?? [])];
  for (const source of input.sources ?? []) {
    ctx.progress(`building ${basename(source)}`);
    const built = await buildExternalModules(ctx, { source, buildDir: input.buildDir!, release: input.release, jobs: input.jobs });
    for (const b of built) {
      extra.push({ name: b.name, path: `extra/${basename(b.file)}`, file: b.file, info: b.info });
      requests.push(b.name);
    }
  }
  const set = await resolveModules({ ...input, requests, extra }, ctx);
  const { closure } = set;

  const out = join(ctx.workDir, 'modules');
  await rm(out, { recursive: true, force: true });
  const releaseCleanup = ctx.cleanup.tempPath(out);
  const base = `lib/modules/${input.release}`;
  const files: ModuleFile[] = [];
  const modules: GuestModule[] = [];
  const destOf = new Map<string, string>();
  let bytes = 0;
  ctx.progress('laying out modules');
  for (const [i, m] of closure.modules.entries()) {
    const rel = guestPath(m.path, loads);
    const keep = rel === m.path;
    const src = keep ? m.file : join(out, base, rel);
    let size: number;
    if (keep) size = (await stat(m.file)).size;
    else {
      const data = await readModuleBytes(m.file, ctx);
      await mkdir(dirname(src), { recursive: true });
      await writeFile(src, data);
      size = data.length;
    }
    files.push({ src, dest: `${base}/${rel}` });
    destOf.set(m.name, rel);
    bytes += size;
    modules.push({ name: m.name, dest: `${base}/${rel}`, size, release: m.info.release, verdict: set.verdicts[i]!.verdict, kind: m.kind, via: m.via });
  }

  // The flat copies of the requested modules, always plain .ko.
  const flatSeen = new Set<string>();
  for (const r of closure.requests) {
    for (const name of r.modules) {
      const m = closure.modules.find((x) => x.name === name)!;
      const flat = `lib/modules/${basename(m.path).replace(/\.(gz|xz|zst)$/, '')}`;
      if (flatSeen.has(flat)) continue;
      flatSeen.add(flat);
      const rel = destOf.get(name)!;
      let src = files.find((f) => f.dest === `${base}/${rel}`)!.src;
      if (moduleCompression(rel) !== 'none') {
        src = join(out, 'flat', basename(flat));
        await mkdir(dirname(src), { recursive: true });
        await writeFile(src, await readModuleBytes(m.file, ctx));
      }
      files.push({ src, dest: flat });
      bytes += (await stat(src)).size;
    }
  }

  // modules.dep for the guest, in kmod's format (paths relative to lib/modules/<release>).
  const deps = transitiveDepends(closure);
  const depLines = closure.modules.map((m) => `${destOf.get(m.name)}:${deps.get(m.name)!.map((d) => ` ${destOf.get(d.name)}`).join('')}\n`);
  const depFile = join(out, base, 'modules.dep');
  await mkdir(dirname(depFile), { recursive: true });
  await writeFile(depFile, depLines.join(''));
  files.push({ src: depFile, dest: `${base}/modules.dep` });

  const loadOrder = closure.modules.map((m) => m.name);
  const etcModules =
    '# Kernel modules that /etc/rc.d/rcS loads at boot, in this order (written by domu from the\n' +
    `# modules: list of the build description and their dependencies, for kernel ${input.release}).\n` +
    loadOrder.map((n) => `${n}\n`).join('');
  releaseCleanup();
  ctx.log.info(`modules: ${loadOrder.length} modules for ${input.release} in load order: ${loadOrder.join(' ') || '(none)'}`);
  return {
    release: input.release,
    files,
    etcModules,
    loadOrder,
    modules,
    builtin: closure.builtin.map((b) => b.name),
    warnings: closure.warnings,
    indexSource: set.index.source,
    bytes,
    set,
  };
}
