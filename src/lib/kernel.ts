// A Debian kernel (image + modules) for the guest, without installing anything: the meta package
// (e.g. linux-image-amd64) is resolved to the real image package through a PRIVATE binary
// (`deb`) apt configuration, `apt-get download` fetches the .deb and `dpkg-deb -x` unpacks it
// into a cache entry `kernels/<package>_<version>`. A memo `kernel-memos/<meta>.json` maps the
// meta package to that entry for 24 h, so a repeated call within a day runs no apt at all.
import { open, readdir, readFile, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { StageContext } from '../pipeline/context.js';
import { aptUpdate, candidateVersion, dependsNames, downloadPackage, makePrivateApt, showPackage } from './apt.js';
import { writeFileAtomic } from './atomic.js';
import { DomuError, errorMessage } from './errors.js';
import { run } from './exec.js';

/**
 * The kernel release (e.g. `6.1.0-41-amd64`) from an x86 bzImage's setup header: boot flag
 * 0xAA55 at 0x1FE, magic "HdrS" at 0x202, protocol version at 0x206, and the u16
 * `kernel_version` pointer at 0x20E; the NUL-terminated version string lies at pointer + 0x200
 * and the release is its first word.
 */
export async function kernelReleaseFromImage(path: string): Promise<string> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new DomuError(`${path}: cannot read kernel image: ${errorMessage(e)}`, { cause: e });
  }
  try {
    const hdr = Buffer.alloc(0x210);
    const { bytesRead } = await fh.read(hdr, 0, hdr.length, 0);
    if (bytesRead < hdr.length) throw new DomuError(`${path}: not an x86 bzImage (truncated: ${bytesRead} bytes, no complete setup header)`);
    if (hdr.toString('latin1', 0x202, 0x206) !== 'HdrS' || hdr.readUInt16LE(0x1fe) !== 0xaa55) {
      throw new DomuError(`${path}: not an x86 bzImage (no "HdrS" setup header magic at 0x202)`);
    }
    const protocol = hdr.readUInt16LE(0x206);
    if (protocol < 0x200) throw new DomuError(`${path}: boot protocol ${protocol.toString(16)} is too old to carry a kernel version`);
    const ptr = hdr.readUInt16LE(0x20e);
    if (ptr === 0) throw new DomuError(`${path}: the bzImage setup header has no kernel_version string`);
    const str = Buffer.alloc(256);
    const got = (await fh.read(str, 0, str.length, ptr + 0x200)).bytesRead;
    const nul = str.subarray(0, got).indexOf(0);
    if (nul < 0) throw new DomuError(`${path}: truncated bzImage: the kernel_version string at ${ptr + 0x200} is not NUL-terminated`);
    const release = str.toString('latin1', 0, nul).trim().split(/\s+/)[0] ?? '';
    if (!/^\d+\.\d+\S*$/.test(release)) throw new DomuError(`${path}: corrupt bzImage: kernel_version string "${str.toString('latin1', 0, nul)}" is not a kernel release`);
    return release;
  } finally {
    await fh.close();
  }
}

export interface KernelPackage {
  /** The unpacked package (the cache entry). */
  root: string;
  /** e.g. 6.1.0-41-amd64 */
  release: string;
  /** The real image package, e.g. linux-image-6.1.0-41-amd64. */
  package: string;
  /** Its Debian version. */
  version: string;
  /** `<root>/boot/vmlinuz-<release>` */
  image: string;
  /** `<root>/lib/modules/<release>` */
  modules: string;
}

export interface FetchKernelOptions {
  /** A meta package (linux-image-amd64) or a real image package (linux-image-6.1.0-41-amd64). */
  package: string;
  /** The system apt configuration to derive the Debian entries from (default /etc/apt). */
  aptEtc?: string;
}

interface Memo {
  package: string;
  version: string;
  key: string;
  /** ms since the epoch */
  resolvedAt: number;
}

const MEMO_TTL_MS = 24 * 3600_000;
const KIND = 'kernels';
const MEMO_KIND = 'kernel-memos';

function cacheKey(pkg: string, version: string): string {
  return `${pkg}_${version}`.replace(/[^A-Za-z0-9._-]/g, '_');
}

async function readMemo(ctx: StageContext, meta: string): Promise<Memo | undefined> {
  try {
    const m = JSON.parse(await readFile(join(ctx.cache.root, MEMO_KIND, `${meta}.json`), 'utf8')) as Memo;
    if (typeof m.key !== 'string' || typeof m.resolvedAt !== 'number') return undefined;
    if (Date.now() - m.resolvedAt > MEMO_TTL_MS || m.resolvedAt > Date.now() + 60_000) return undefined;
    return m;
  } catch {
    return undefined;
  }
}

/** Locate image and modules inside an unpacked kernel package and check that they agree. */
async function inspect(root: string, pkg: string, version: string): Promise<KernelPackage> {
  let modulesBase = join(root, 'lib', 'modules');
  let releases = await readdir(modulesBase).catch(() => [] as string[]);
  if (!releases.length) {
    modulesBase = join(root, 'usr', 'lib', 'modules');
    releases = await readdir(modulesBase).catch(() => [] as string[]);
  }
  const images = (await readdir(join(root, 'boot')).catch(() => [] as string[])).filter((n) => n.startsWith('vmlinuz-'));
  if (images.length !== 1) throw new DomuError(`${pkg} ${version}: expected one boot/vmlinuz-* in ${root}, found ${images.length ? images.join(', ') : 'none'}`);
  if (releases.length !== 1) throw new DomuError(`${pkg} ${version}: expected one lib/modules/<release> in ${root}, found ${releases.length ? releases.join(', ') : 'none'}`);
  const image = join(root, 'boot', images[0]!);
  const dirRelease = releases[0]!;
  const release = await kernelReleaseFromImage(image);
  if (release !== dirRelease) {
    throw new DomuError(`${pkg} ${version}: the kernel image ${image} says release ${release}, but its modules are in ${join(modulesBase, dirRelease)}`);
  }
  return { root, release, package: pkg, version, image, modules: join(modulesBase, dirRelease) };
}

/**
 * Fetch and unpack a Debian kernel image package into the cache (see the file comment).
 * Nothing is installed and the system's apt configuration and state are not touched.
 */
export async function fetchKernelPackage(ctx: StageContext, opts: FetchKernelOptions): Promise<KernelPackage> {
  const meta = opts.package;
  if (!/^[a-z0-9][a-z0-9.+-]+$/.test(meta)) throw new DomuError(`bad kernel package name "${meta}"`);

  const memo = await readMemo(ctx, meta);
  if (memo) {
    const hit = await ctx.cache.lookup(KIND, memo.key);
    if (hit) {
      ctx.log.info(`kernel: ${memo.package} ${memo.version} from the cache`);
      return inspect(hit, memo.package, memo.version);
    }
  }

  const scratch = join(ctx.cache.root, 'apt', `.tmp-kernel-${process.pid}-${Date.now()}`);
  await mkdir(scratch, { recursive: true });
  const release = ctx.cleanup.tempPath(scratch);
  try {
    const apt = await makePrivateApt(join(scratch, 'apt'), opts.aptEtc, { types: 'deb' });
    ctx.log.info("kernel: reading Debian's package index (private apt configuration)");
    ctx.progress('apt-get update');
    await aptUpdate(ctx, apt);
    const metaVersion = await candidateVersion(ctx, apt, meta);
    if (!metaVersion) throw new DomuError(`Debian's archive has no package ${meta}`, { hint: 'check the kernel package name (e.g. linux-image-amd64)' });
    const fields = await showPackage(ctx, apt, meta, metaVersion);
    const image = dependsNames(fields.Depends).find((d) => /^linux-image-\d/.test(d));
    let pkg = meta;
    let version = metaVersion;
    if (image) {
      pkg = image;
      const v = await candidateVersion(ctx, apt, image);
      if (!v) throw new DomuError(`${meta} ${metaVersion} depends on ${image}, which Debian's archive does not offer`);
      version = v;
    }
    const key = cacheKey(pkg, version);
    let entry = await ctx.cache.lookup(KIND, key);
    if (!entry) {
      ctx.log.info(`kernel: downloading ${pkg} ${version}`);
      ctx.progress(`downloading ${pkg}`);
      const debDir = join(scratch, 'deb');
      await mkdir(debDir);
      const deb = await downloadPackage(ctx, apt, pkg, version, debDir);
      ctx.progress(`unpacking ${pkg}`);
      entry = await ctx.cache.store(
        KIND,
        key,
        async (dir) => {
          await run(ctx, 'dpkg-deb', ['-x', deb, dir], { timeoutMs: 600_000, quiet: true, missingHint: 'install dpkg' });
          await inspect(dir, pkg, version); // never cache a package that is not a usable kernel
        },
        (tmp) => ctx.cleanup.tempPath(tmp),
      );
      await rm(deb, { force: true });
    } else {
      ctx.log.info(`kernel: ${pkg} ${version} from the cache`);
    }
    const memoOut: Memo = { package: pkg, version, key, resolvedAt: Date.now() };
    await writeFileAtomic(join(ctx.cache.root, MEMO_KIND, `${meta}.json`), `${JSON.stringify(memoOut, null, 2)}\n`);
    return await inspect(entry, pkg, version);
  } finally {
    await rm(scratch, { recursive: true, force: true });
    release();
  }
}
