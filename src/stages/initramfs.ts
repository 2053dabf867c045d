// The initramfs stage: the guest's own ramdisk (gzip cpio newc), so that the guest does not depend
// on a Dom0's initramfs. It carries a static busybox, /dev/console and /dev/null (cpio records:
// nothing is mknod'ed, no root needed), the modules the guest needs to reach its root file system
// (decompressed: busybox insmod cannot load zstd, and xz/gz only with optional features), their
// load list /etc/modules, and /init (initramfs/init, a data file of this project).
//
// Reproducible: every time in the archive is the given SOURCE_DATE_EPOCH and nothing else from the
// host goes in, so the same inputs give the same bytes.
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { tempPathFor } from '../core/atomic.js';
import { writeCpioGzip, type CpioEntry } from '../fs/cpio.js';
import { parseElf } from '../kernel/elf.js';
import { abortError, DomuError, errorMessage, InputError } from '../core/errors.js';
import { run } from '../core/exec.js';
import { sha256File } from '../core/hash.js';
import { moduleInfoFromSection, readModuleBytes } from '../kernel/modinfo.js';
import { projectPath } from '../core/paths.js';
import type { StageContext } from '../core/context.js';

/** The /init script shipped with domu-builder (top-level data, like busybox-config/). */
export const INIT_SCRIPT = projectPath('initramfs', 'init');

/** Applets /init cannot do without (it calls each as `busybox <applet>`). */
export const REQUIRED_APPLETS = ['sh', 'mount', 'umount', 'insmod', 'switch_root', 'usleep', 'mountpoint', 'uname', 'ls'] as const;

export interface InitramfsModule {
  /** The module name (e.g. virtio_blk); checked against the module's own .modinfo. */
  name: string;
  /** The module file on the build host: .ko, .ko.xz, .ko.zst or .ko.gz. */
  file: string;
  /** Its path relative to lib/modules/<release>, e.g. kernel/fs/ext4/ext4.ko (a compression suffix is dropped). */
  path: string;
}

export interface InitramfsInput {
  /** The static busybox binary (`<installTree>/bin/busybox` of the compile stage). */
  busybox: string;
  /** The guest kernel release, e.g. 6.1.0-41-amd64: the modules' directory and their vermagic. */
  release: string;
  /** The modules, in load order (dependencies first). */
  modules: readonly InitramfsModule[];
  /** Where the gzip cpio goes (written atomically). */
  output: string;
  /** SOURCE_DATE_EPOCH: the mtime of every entry. */
  sourceDateEpoch: number;
  /** Another /init script (tests); default INIT_SCRIPT. */
  initScript?: string;
}

export interface InitramfsOutput {
  path: string;
  sha256: string;
  /** Bytes of the gzip file. */
  size: number;
  /** Bytes of the cpio archive before compression. */
  uncompressedSize: number;
  /** cpio records (trailer not counted). */
  entries: number;
  /** Module names in load order. */
  modules: string[];
  /** The text of /etc/modules in the ramdisk. */
  loadList: string;
}

const RELEASE_RE = /^[A-Za-z0-9][A-Za-z0-9._+~-]*$/;
const MODULE_PATH_RE = /\.ko(\.(gz|xz|zst))?$/;
/** ELF machines this host can run, to ask a busybox for its applets (a cross build cannot run here). */
const HOST_MACHINE: Partial<Record<string, number>> = { x64: 62, arm64: 183, ia32: 3, riscv64: 243 };

export async function initramfsStage(input: InitramfsInput, ctx: StageContext): Promise<InitramfsOutput> {
  if (!RELEASE_RE.test(input.release)) throw new InputError(`initramfs: kernel release ${JSON.stringify(input.release)} is not a release name (e.g. 6.1.0-41-amd64)`);
  if (!Number.isInteger(input.sourceDateEpoch) || input.sourceDateEpoch < 0) throw new InputError(`initramfs: SOURCE_DATE_EPOCH ${input.sourceDateEpoch} is not whole seconds since 1970`);

  const busybox = await readBusybox(input.busybox, ctx);
  const initText = await readFile(input.initScript ?? INIT_SCRIPT).catch((e: unknown) => {
    throw new DomuError(`initramfs: cannot read the /init script ${input.initScript ?? INIT_SCRIPT}: ${errorMessage(e)}`, { hint: 'reinstall domu-builder (initramfs/init is part of it)' });
  });

  const moduleDir = `lib/modules/${input.release}`;
  const entries: CpioEntry[] = [
    { type: 'file', path: 'init', mode: 0o755, data: initText },
    { type: 'file', path: 'bin/busybox', mode: 0o755, data: busybox },
    { type: 'symlink', path: 'bin/sh', target: 'busybox' }, // the #! of /init and the rescue shell
    { type: 'dir', path: 'dev' },
    { type: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 },
    { type: 'char', path: 'dev/null', mode: 0o666, major: 1, minor: 3 },
    { type: 'dir', path: 'etc' },
    { type: 'dir', path: moduleDir },
    { type: 'dir', path: 'newroot' },
    { type: 'dir', path: 'proc' },
    { type: 'dir', path: 'sys' },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
  ];

  const names = new Set<string>();
  const loadLines: string[] = [];
  for (const [i, m] of input.modules.entries()) {
    if (ctx.signal.aborted) throw abortError(ctx.signal);
    ctx.progress(`module ${i + 1}/${input.modules.length}: ${m.name}`);
    if (names.has(m.name)) throw new DomuError(`initramfs: module ${m.name} is listed twice`);
    names.add(m.name);
    if (!MODULE_PATH_RE.test(m.path)) throw new DomuError(`initramfs: module ${m.name}: path ${JSON.stringify(m.path)} does not end in .ko, .ko.xz, .ko.zst or .ko.gz`);
    const bytes = await readModuleBytes(m.file, ctx);
    const section = parseElf(bytes, m.file).section('.modinfo');
    if (!section) throw new DomuError(`initramfs: ${m.file} has no .modinfo section (not a kernel module?)`);
    const info = moduleInfoFromSection(m.file, section);
    if (info.release !== input.release) {
      throw new DomuError(`initramfs: ${m.file} was built for kernel ${info.release || '(no vermagic)'}, the ramdisk is for ${input.release}: insmod would refuse it`, { hint: 'take the modules from the guest kernel\'s own lib/modules/<release>' });
    }
    if (info.name !== m.name.replace(/-/g, '_')) throw new DomuError(`initramfs: ${m.file} is module ${info.name}, not ${m.name}`);
    const path = `${moduleDir}/${m.path.replace(MODULE_PATH_RE, '.ko')}`;
    entries.push({ type: 'file', path, mode: 0o644, data: bytes });
    loadLines.push(`/${path}`);
  }
  const loadList = `# Loaded in this order by /init (domu-builder); dependencies first.\n${loadLines.map((l) => `${l}\n`).join('')}`;
  entries.push({ type: 'file', path: 'etc/modules', mode: 0o644, data: Buffer.from(loadList) });

  await mkdir(dirname(input.output), { recursive: true });
  const tmp = tempPathFor(input.output);
  const release = ctx.cleanup.tempPath(tmp);
  let written;
  try {
    written = await writeCpioGzip(tmp, entries, { mtime: input.sourceDateEpoch });
    await rename(tmp, input.output);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  } finally {
    release();
  }
  const size = (await stat(input.output)).size;
  const modules = input.modules.map((m) => m.name);
  ctx.log.info(`initramfs: ${modules.length} modules${modules.length ? ` (${modules.join(', ')})` : ''}, ${written.entries} entries, ${(size / 1048576).toFixed(1)} MiB gzip → ${input.output}`);
  return { path: input.output, sha256: await sha256File(input.output), size, uncompressedSize: written.uncompressed, entries: written.entries, modules, loadList };
}

/** The busybox bytes, after checking that they can run as the ramdisk's only program. */
async function readBusybox(path: string, ctx: StageContext): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new DomuError(`initramfs: cannot read busybox ${path}: ${errorMessage(e)}`, { cause: e });
  }
  const elf = parseElf(bytes, path);
  if (!elf.isStatic()) {
    throw new DomuError(`initramfs: ${path} is dynamically linked (${elf.interpreter() ?? elf.needed().join(', ')}): the ramdisk has no shared libraries`, { hint: 'build busybox with CONFIG_STATIC=y' });
  }
  if (elf.machine === HOST_MACHINE[process.arch]) {
    const listed = new Set((await run(ctx, path, ['--list'], { quiet: true })).stdout.split('\n'));
    const missing = REQUIRED_APPLETS.filter((a) => !listed.has(a));
    if (missing.length) throw new DomuError(`initramfs: ${path} lacks the applet${missing.length > 1 ? 's' : ''} /init needs: ${missing.join(', ')}`, { hint: 'turn them on in the busybox fragment (CONFIG_<NAME>=y)' });
  } else {
    ctx.log.debug(`initramfs: ${path} is a ${elf.machineName} binary; its applets are not checked on this host`);
  }
  return bytes;
}
