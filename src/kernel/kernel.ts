// Debian kernel packages for the guest, without installing anything: a PRIVATE binary (`deb`)
// apt configuration resolves what to fetch, `apt-get download` fetches the .debs and
// `dpkg-deb -x` unpacks them together into ONE cache entry `<kind>/<package>_<version>`. A memo
// `kernel-memos/<request>.json` maps the request to that entry for 24 h, so a repeated call
// within a day runs no apt at all. fetchKernelPackage (image + modules) lives here;
// fetchKernelHeaders (kbuild.ts) uses the same fetchDebsIntoCache.
import { mkdtemp, open, readdir, readFile, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { StageContext } from '../core/context.js';
import { aptUpdate, candidatePackage, candidateVersion, dependsNames, downloadPackages, makePrivateApt, verifyDebs, type CandidatePackage, type PrivateApt } from '../fetch/apt.js';
import { writeFileAtomic } from '../core/atomic.js';
import { DomuError, errorMessage } from '../core/errors.js';
import { run } from '../core/exec.js';
import { sha256FileSync } from '../core/hash.js';
import { manifestFileSha256 } from '../core/manifest.js';

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

/** A binary package at one version. */
export interface Deb {
  package: string;
  version: string;
}

interface Memo extends Deb {
  key: string;
  /** ms since the epoch */
  resolvedAt: number;
}

const MEMO_TTL_MS = 24 * 3600_000;
const MEMO_KIND = 'kernel-memos';

function cacheKey(deb: Deb): string {
  return `${deb.package}_${deb.version}`.replace(/[^A-Za-z0-9._-]/g, '_');
}

async function readMemo(ctx: StageContext, request: string): Promise<Memo | undefined> {
  try {
    const m = JSON.parse(await readFile(join(ctx.cache.root, MEMO_KIND, `${request}.json`), 'utf8')) as Memo;
    if (typeof m.key !== 'string' || typeof m.package !== 'string' || typeof m.version !== 'string' || typeof m.resolvedAt !== 'number') return undefined;
    if (Date.now() - m.resolvedAt > MEMO_TTL_MS || m.resolvedAt > Date.now() + 60_000) return undefined;
    return m;
  } catch {
    return undefined;
  }
}

export interface FetchDebsOptions<T> {
  /** The package asked for (a meta package, linux-headers-<release>); also names the memo. */
  request: string;
  /** Another name for the memo, when the same request can resolve to different package sets. */
  memo?: string;
  /** What to tell the user when Debian's archive has no such package. */
  missingHint: string;
  /** The cache kind the entries live under. */
  kind: string;
  /** Prefix of the log lines, e.g. `kernel`. */
  label: string;
  /** The system apt configuration to derive the Debian entries from (default /etc/apt). */
  aptEtc?: string | undefined;
  /** From the requested package: the packages to unpack together, the main one (naming the entry) first. */
  resolve(apt: PrivateApt, requested: CandidatePackage): Promise<Deb[]>;
  /**
   * The entry's name from every package resolved (default: the main one's name and version). Give
   * it when the other packages can change while the main one does not, so that they name the entry too.
   */
  entryKey?(debs: readonly Deb[]): string;
  /** Adjust a freshly unpacked tree before it is cached (e.g. make it relocatable). */
  fixUp?(dir: string, main: Deb): Promise<void>;
  /** The result from an entry; throws when the tree is unusable. Runs before caching and on hits. */
  inspect(dir: string, main: Deb): Promise<T>;
  /**
   * On a hit, after the stat fingerprint proved the entry: hash the files a build uses every time
   * against the manifest (e.g. the kernel image); a problem text makes the entry corrupt.
   */
  check?(dir: string): Promise<string | undefined>;
}

/** Beside the unpacked packages in an entry: which .debs they came from, with the archive's hashes. */
export const DEBS_RECORD = 'domu-debs.json';

/** Promise.all that waits for every child to end before it throws the first failure. */
export async function settleAll<T>(work: Promise<T>[]): Promise<T[]> {
  const done = await Promise.allSettled(work);
  const failed = done.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
  return done.map((r) => (r as PromiseFulfilledResult<T>).value);
}

/**
 * Resolve, download and unpack Debian packages into one cache entry (see the file comment).
 * Nothing is installed and the system's apt configuration and state are not touched.
 */
export async function fetchDebsIntoCache<T>(ctx: StageContext, opts: FetchDebsOptions<T>): Promise<T> {
  const memoName = opts.memo ?? opts.request;
  const memo = await readMemo(ctx, memoName);
  // Unpacked packages are big (a kernel: ~4000 files, ~400 MB; its headers ~16000 files): proved
  // by their stat fingerprint (~45 ms and ~90 ms) and hashed in full only when that changed.
  const lookup = (key: string) => ctx.cache.lookup(opts.kind, key, { log: ctx.log, redo: 'fetching the package again', verify: 'stat', check: opts.check });
  const memoHit = memo && (await lookup(memo.key));
  if (memo && memoHit) {
    ctx.log.info(`${opts.label}: ${memo.package} ${memo.version} from the cache`);
    return opts.inspect(memoHit, memo);
  }

  await mkdir(join(ctx.cache.root, 'apt'), { recursive: true });
  // mkdtemp: a kernel and its headers may be fetched at the same time by one process.
  const scratch = await mkdtemp(join(ctx.cache.root, 'apt', `.tmp-${opts.label}-`));
  const release = ctx.cleanup.tempPath(scratch);
  try {
    const apt = await makePrivateApt(join(scratch, 'apt'), opts.aptEtc, { types: 'deb' });
    ctx.log.info(`${opts.label}: reading Debian's package index (private apt configuration)`);
    ctx.progress('apt-get update');
    await aptUpdate(ctx, apt);
    const requested = await candidatePackage(ctx, apt, opts.request);
    if (!requested) throw new DomuError(`Debian's archive has no package ${opts.request}`, { hint: opts.missingHint });
    const debs = await opts.resolve(apt, requested);
    const main = debs[0];
    if (!main) throw new Error(`${opts.request}: resolve() returned no package`);
    const key = opts.entryKey ? opts.entryKey(debs).replace(/[^A-Za-z0-9._-]/g, '_') : cacheKey(main);
    let entry = await lookup(key);
    if (!entry) {
      const debDir = join(scratch, 'deb');
      await mkdir(debDir);
      ctx.log.info(`${opts.label}: downloading ${debs.map((d) => `${d.package} ${d.version}`).join(', ')}`);
      ctx.progress(`downloading ${main.package}`);
      const files = await downloadPackages(ctx, apt, debs, debDir);
      // apt checked them against the signed index already; proving it here costs ~0.2 s next to
      // the download, and the manifest is then made from the archive's own bytes.
      const record = await verifyDebs(ctx, apt, debs, files);
      ctx.progress(`unpacking ${main.package}`);
      entry = await ctx.cache.store(
        opts.kind,
        key,
        async (dir) => {
          // One after the other: unpacking is file-creation bound; in parallel it is slower.
          for (const f of files) await run(ctx, 'dpkg-deb', ['-x', f, dir], { timeoutMs: 600_000, quiet: true, missingHint: 'install dpkg' });
          await opts.fixUp?.(dir, main);
          await writeFile(join(dir, DEBS_RECORD), `${JSON.stringify(record, null, 2)}\n`);
          await opts.inspect(dir, main); // never cache a tree that is not usable
        },
        (tmp) => ctx.cleanup.tempPath(tmp),
        { log: ctx.log, redo: 'replacing it', verify: 'stat' },
      );
    } else {
      ctx.log.info(`${opts.label}: ${main.package} ${main.version} from the cache`);
    }
    const memoOut: Memo = { package: main.package, version: main.version, key, resolvedAt: Date.now() };
    await writeFileAtomic(join(ctx.cache.root, MEMO_KIND, `${memoName}.json`), `${JSON.stringify(memoOut, null, 2)}\n`);
    return await opts.inspect(entry, main);
  } finally {
    await rm(scratch, { recursive: true, force: true });
    release();
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
 * Fetch and unpack a Debian kernel image package into the cache `kernels/` (see the file comment).
 * A meta package (linux-image-amd64) is resolved to the image package it depends on.
 */
export async function fetchKernelPackage(ctx: StageContext, opts: FetchKernelOptions): Promise<KernelPackage> {
  const meta = opts.package;
  if (!/^[a-z0-9][a-z0-9.+-]+$/.test(meta)) throw new DomuError(`bad kernel package name "${meta}"`);
  return fetchDebsIntoCache(ctx, {
    request: meta,
    kind: 'kernels',
    label: 'kernel',
    aptEtc: opts.aptEtc,
    missingHint: 'check the kernel package name (e.g. linux-image-amd64)',
    resolve: async (apt, top) => {
      const image = dependsNames(top.fields.Depends).find((d) => /^linux-image-\d/.test(d));
      if (!image) return [top];
      const version = await candidateVersion(ctx, apt, image);
      if (!version) throw new DomuError(`${meta} ${top.version} depends on ${image}, which Debian's archive does not offer`);
      return [{ package: image, version }];
    },
    inspect: (dir, main) => inspect(dir, main.package, main.version),
    // The image goes into every build (~8 MB, a few ms): hashed on every hit, not only stat-proved.
    check: async (dir) => {
      for (const n of (await readdir(join(dir, 'boot')).catch(() => [] as string[])).filter((x) => x.startsWith('vmlinuz-'))) {
        const want = manifestFileSha256(dir, `boot/${n}`);
        if (!want || sha256FileSync(join(dir, 'boot', n)) !== want) return `boot/${n}: sha256 differs`;
      }
      return undefined;
    },
  });
}
