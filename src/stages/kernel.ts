// The kernel stage (design.md, "kernel"): which kernel the guest boots and whose modules it gets.
//   explicit  kernel.image and/or kernel.modules are paths: the missing one is derived from the
//             other's release (/boot/vmlinuz-<release>, /lib/modules/<release>);
//   host      both `auto`: the running kernel's /boot/vmlinuz-$(uname -r) and
//             /lib/modules/$(uname -r), when both exist;
//   package   otherwise the Debian package kernel.package, fetched into the cache (kernel/kernel.ts).
// The release is read from the image's bzImage header, never from a file name, and must equal
// the modules directory's name: a mismatch shows both. For `xen.type: pvh` the image must boot as
// PVH (CONFIG_XEN_PVH, kernel/pvh.ts): a kernel that cannot is one line, exit 2.
import { mkdir, stat } from 'node:fs/promises';
import { release as osRelease } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { InputError } from '../core/errors.js';
import { fetchKernelPackage, kernelReleaseFromImage } from '../kernel/kernel.js';
import { kernelPvhSupport, type PvhVerdict } from '../kernel/pvh.js';
import type { StageContext } from '../core/context.js';

export interface KernelInput {
  /** `auto` or an absolute path of a bzImage. */
  image: string;
  /** `auto` or an absolute path of a /lib/modules/<release> directory. */
  modules: string;
  /** Debian package for the `package` origin (e.g. linux-image-amd64). */
  package: string;
  /** The running kernel's release (uname -r); a parameter so tests can name an absent one. */
  hostRelease?: string;
  /** Where /boot and /lib/modules of the host are (tests); default /. */
  hostRoot?: string;
  /** `domu modules`: a modules directory alone will do (its name is the release). */
  imageOptional?: boolean;
  /** The guest type the image must boot as (a build); absent: not checked. */
  xenType?: 'pvh' | 'pv';
}

export interface KernelOutput {
  origin: 'explicit' | 'host' | 'package';
  release: string;
  /** The bzImage; undefined only with imageOptional and no image beside the modules. */
  image: string | undefined;
  modulesDir: string;
  /** For origin `package`: the real image package and its version. */
  package?: string | undefined;
  version?: string | undefined;
  /** With xenType pvh: how the image was found to boot as PVH (or that nothing told). */
  pvh?: PvhVerdict | undefined;
}

async function isDir(p: string): Promise<boolean> {
  return stat(p).then((s) => s.isDirectory(), () => false);
}
async function isFile(p: string): Promise<boolean> {
  return stat(p).then((s) => s.isFile(), () => false);
}

function checkAgreement(image: string, release: string, modulesDir: string): void {
  if (basename(modulesDir) !== release) {
    throw new InputError(
      `kernel release mismatch: ${image} is release ${release}, but the modules directory is ${modulesDir} (release ${basename(modulesDir)})`,
      'point kernel.image and kernel.modules at the same kernel (/boot/vmlinuz-<release> and /lib/modules/<release>)',
    );
  }
}

async function explicit(input: KernelInput): Promise<KernelOutput> {
  let image = input.image;
  let modulesDir = input.modules;
  if (image !== 'auto' && !(await isFile(image))) throw new InputError(`kernel.image: no such file ${image}`, 'give the path of the guest kernel (e.g. /boot/vmlinuz-<release>) or auto');
  if (modulesDir !== 'auto' && !(await isDir(modulesDir))) throw new InputError(`kernel.modules: no such directory ${modulesDir}`, 'give the kernel\'s modules directory (e.g. /lib/modules/<release>) or auto');
  if (image === 'auto') {
    // Beside the modules: <root>/lib/modules/<release> → <root>/boot/vmlinuz-<release>.
    const release = basename(modulesDir);
    image = join(dirname(dirname(dirname(modulesDir))), 'boot', `vmlinuz-${release}`);
    if (!(await isFile(image)) && input.imageOptional) return { origin: 'explicit', release, image: undefined, modulesDir };
    if (!(await isFile(image))) throw new InputError(`kernel.image: auto, but there is no ${image} for the modules in ${modulesDir}`, 'set kernel.image to the kernel of that release');
  }
  const release = await kernelReleaseFromImage(image).catch((e: unknown) => {
    throw new InputError(`kernel.image: ${(e as Error).message}`, 'give an x86 bzImage such as /boot/vmlinuz-<release>');
  });
  if (modulesDir === 'auto') {
    modulesDir = join(dirname(dirname(image)), 'lib', 'modules', release);
    if (!(await isDir(modulesDir))) throw new InputError(`kernel.modules: auto, but there is no ${modulesDir} for ${image} (release ${release})`, 'set kernel.modules to the modules directory of that kernel');
  }
  checkAgreement(image, release, modulesDir);
  return { origin: 'explicit', release, image, modulesDir };
}

export async function kernelStage(input: KernelInput, ctx: StageContext): Promise<KernelOutput> {
  const k = await resolveKernel(input, ctx);
  if (input.xenType !== 'pvh' || k.image === undefined) return k;
  const scratch = join(ctx.workDir, 'kernel');
  await mkdir(scratch, { recursive: true });
  const pvh = await kernelPvhSupport(ctx, k.image, k.release, scratch);
  if (pvh.pvh === false) {
    throw new InputError(`the guest kernel ${k.release} (${k.image}) cannot boot as PVH (xen.type: pvh): ${pvh.evidence}; use xen.type: pv, or a kernel built with CONFIG_XEN_PVH=y`);
  }
  if (pvh.pvh === undefined) ctx.log.warn(`cannot tell whether the guest kernel ${k.release} boots as PVH (xen.type: pvh): ${pvh.evidence}`);
  else ctx.log.info(`kernel: ${k.release} boots as PVH (${pvh.evidence})`);
  return { ...k, pvh };
}

async function resolveKernel(input: KernelInput, ctx: StageContext): Promise<KernelOutput> {
  if (input.image !== 'auto' || input.modules !== 'auto') {
    const k = await explicit(input);
    ctx.log.info(`kernel: ${k.release} from the description (${k.image}, ${k.modulesDir})`);
    return k;
  }
  const host = input.hostRelease ?? osRelease();
  const root = input.hostRoot ?? '/';
  const hostImage = join(root, 'boot', `vmlinuz-${host}`);
  const hostModules = join(root, 'lib', 'modules', host);
  if ((await isFile(hostImage)) && (await isDir(hostModules))) {
    const release = await kernelReleaseFromImage(hostImage);
    checkAgreement(hostImage, release, hostModules);
    ctx.log.info(`kernel: the running kernel ${release} (${hostImage}, ${hostModules})`);
    return { origin: 'host', release, image: hostImage, modulesDir: hostModules };
  }
  ctx.log.info(`kernel: no ${hostImage} with ${hostModules} on this host; using the Debian package ${input.package}`);
  const pkg = await fetchKernelPackage(ctx, { package: input.package });
  return { origin: 'package', release: pkg.release, image: pkg.image, modulesDir: pkg.modules, package: pkg.package, version: pkg.version };
}

/** The kernel's build directory for out-of-tree modules when it has one (`<modules>/build`). */
export async function localBuildDir(k: KernelOutput): Promise<string | undefined> {
  const build = join(k.modulesDir, 'build');
  return (await isFile(join(build, 'Makefile'))) ? build : undefined;
}
