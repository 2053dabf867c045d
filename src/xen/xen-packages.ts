// The packages of the nested Xen host (facts.md, "Real Xen nested in QEMU"), from Debian's archive
// and nothing from this machine: Debian's hypervisor, its tools (xl, xenstored, xenconsoled, the
// hotplug scripts) and, for a dom0 that does not depend on the host distribution, busybox-static,
// bash, coreutils (stat), util-linux (flock), mount (losetup), libc6, libgcc-s1 and dropbear-bin (the
// lab's ssh, for `xl migrate`), with every library
// package they depend on. `apt-get download` through the private apt configuration + `dpkg-deb -x`
// into ONE cache entry `xen-packages/<hypervisor>_<version>-<hash of every package and version>`
// (fetchDebsIntoCache: index-verified, memoised 24 h). Nothing is installed.
//
// Which Xen: the meta package xen-system-amd64 depends on `xen-hypervisor-<major>.<minor>-amd64`
// and `xen-utils-<major>.<minor>` (as linux-image-amd64 names the kernel); major.minor comes from
// that dependency, never from a constant, and both must agree. Libraries: the Depends and
// Pre-Depends of the chosen packages, recursively, keeping packages of the source package `xen`
// and library packages (udev, python3, ucf, … are not needed to run the binaries). The dom0
// ramdisk then takes only the libraries the binaries' DT_NEEDED entries name (dom0-initramfs.ts).
import { existsSync } from 'node:fs';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { StageContext } from '../core/context.js';
import { DomuError } from '../core/errors.js';
import { hashValue } from '../core/hash.js';
import { candidatePackages, dependsNames, sourcePackageOf, type CandidatePackage, type PrivateApt, type VerifiedDeb } from '../fetch/apt.js';
import { DEBS_RECORD, fetchDebsIntoCache, type Deb } from '../kernel/kernel.js';

/** The meta package that names the archive's current hypervisor and tools packages. */
export const XEN_META_PACKAGE = 'xen-system-amd64';
const HYPERVISOR_RE = /^xen-hypervisor-(\d+\.\d+)-amd64$/;
/** What the dom0 needs besides the hypervisor and xen-utils-<major>.<minor>. */
export const DOM0_PACKAGES = ['xen-utils-common', 'xenstore-utils', 'busybox-static', 'bash', 'coreutils', 'util-linux', 'mount', 'libc6', 'libgcc-s1', 'dropbear-bin'] as const;
const CACHE_KIND = 'xen-packages';

export interface XenPackages {
  /** The unpacked packages (the cache entry). */
  root: string;
  /** xen-hypervisor-<major>.<minor>-amd64 and its Debian version (e.g. 4.17.7+13-g2445b30a44-0+deb12u1). */
  package: string;
  version: string;
  /** e.g. 4.17, from the package name. */
  majorMinor: string;
  /** The hypervisor, gunzipped: a multiboot ELF for QEMU's -kernel. */
  hypervisor: string;
  /** `<root>/usr/lib/xen-<major>.<minor>/bin` (xl, xenstored, xenconsoled, …). */
  toolsDir: string;
  /** Every .deb in the entry, as the archive's index proved it. */
  debs: VerifiedDeb[];
}

const isLibraryPackage = (p: CandidatePackage) => p.fields.Section === 'libs' || /^lib[a-z0-9]/.test(p.package) || /^zlib/.test(p.package);
const depsOf = (p: CandidatePackage) => [...dependsNames(p.fields['Pre-Depends']), ...dependsNames(p.fields.Depends)];

/** The hypervisor package and major.minor that the meta package names; throws when it names none or disagrees. */
export function xenFromMeta(meta: { package: string; version: string; depends: string | undefined }): { hypervisor: string; utils: string; majorMinor: string } {
  const names = dependsNames(meta.depends);
  const hyp = names.map((n) => HYPERVISOR_RE.exec(n)).find(Boolean);
  if (!hyp) throw new DomuError(`${meta.package} ${meta.version} depends on no xen-hypervisor-<major>.<minor>-amd64 (Depends: ${meta.depends ?? 'none'})`);
  const majorMinor = hyp[1]!;
  const utils = `xen-utils-${majorMinor}`;
  if (!names.includes(utils)) throw new DomuError(`${meta.package} ${meta.version} depends on ${hyp[0]} but not on ${utils} (Depends: ${meta.depends ?? 'none'})`);
  return { hypervisor: hyp[0], utils, majorMinor };
}

async function resolveDebs(ctx: StageContext, apt: PrivateApt, meta: CandidatePackage): Promise<Deb[]> {
  const { hypervisor, utils } = xenFromMeta({ package: meta.package, version: meta.version, depends: meta.fields.Depends });
  const wanted = [hypervisor, utils, ...DOM0_PACKAGES];
  const found = await candidatePackages(ctx, apt, wanted);
  const missing = wanted.filter((n) => !found.some((p) => p.package === n));
  if (missing.length) throw new DomuError(`Debian's archive does not offer ${missing.join(', ')} (needed for the nested Xen host)`, { hint: 'check the apt sources (bookworm main and bookworm-security)' });
  const top = found.find((p) => p.package === hypervisor)!;
  const source = sourcePackageOf(top.package, top.fields);
  const chosen = [...found];
  const seen = new Set(wanted);
  for (let level = found.flatMap(depsOf); level.length; ) {
    const fresh = [...new Set(level)].filter((n) => !seen.has(n));
    fresh.forEach((n) => seen.add(n));
    const take = (await candidatePackages(ctx, apt, fresh)).filter((p) => sourcePackageOf(p.package, p.fields) === source || isLibraryPackage(p));
    chosen.push(...take);
    level = take.flatMap(depsOf);
  }
  for (const p of chosen) {
    if (sourcePackageOf(p.package, p.fields) === source && p.version !== top.version) {
      throw new DomuError(`${p.package} ${p.version} is not from the same Xen build as ${top.package} ${top.version}`, { hint: 'the archive is being updated; run again later' });
    }
  }
  ctx.log.info(`xen: ${chosen.length} packages: ${chosen.map((d) => d.package).join(', ')}`);
  return chosen.map((p) => ({ package: p.package, version: p.version }));
}

/** Gunzip `boot/xen-<major>.<minor>-amd64.gz` beside it (QEMU's -kernel wants the ELF). */
async function gunzipHypervisor(dir: string, main: Deb): Promise<void> {
  const gz = (await readdir(join(dir, 'boot')).catch(() => [] as string[])).filter((n) => /^xen-.*\.gz$/.test(n));
  if (gz.length !== 1) throw new DomuError(`${main.package} ${main.version}: expected one boot/xen-*.gz, found ${gz.length ? gz.join(', ') : 'none'}`);
  const elf = gunzipSync(await readFile(join(dir, 'boot', gz[0]!)));
  if (elf.subarray(0, 4).toString('latin1') !== '\x7fELF') throw new DomuError(`${main.package} ${main.version}: boot/${gz[0]} does not unpack to an ELF file`);
  await writeFile(join(dir, 'boot', gz[0]!.replace(/\.gz$/, '')), elf);
}

async function inspect(dir: string, main: Deb): Promise<XenPackages> {
  const majorMinor = HYPERVISOR_RE.exec(main.package)?.[1];
  if (!majorMinor) throw new DomuError(`${dir}: entry of ${main.package}, not a xen-hypervisor-<major>.<minor>-amd64`);
  const hypervisor = join(dir, 'boot', `xen-${majorMinor}-amd64`);
  const toolsDir = join(dir, 'usr', 'lib', `xen-${majorMinor}`, 'bin');
  for (const p of [hypervisor, join(toolsDir, 'xl'), join(dir, 'etc', 'xen', 'scripts', 'block'), join(dir, 'bin', 'busybox')]) {
    if (!existsSync(p)) throw new DomuError(`${main.package} ${main.version}: the unpacked packages lack ${p}`);
  }
  let debs: VerifiedDeb[];
  try {
    debs = JSON.parse(await readFile(join(dir, DEBS_RECORD), 'utf8')) as VerifiedDeb[];
  } catch (e) {
    throw new DomuError(`${dir}: no readable ${DEBS_RECORD}`, { cause: e });
  }
  return { root: dir, package: main.package, version: main.version, majorMinor, hypervisor, toolsDir, debs };
}

/** Fetch (or find in the cache) the nested Xen host's packages; see the file comment. */
export async function fetchXenPackages(ctx: StageContext, opts: { aptEtc?: string } = {}): Promise<XenPackages> {
  return fetchDebsIntoCache(ctx, {
    request: XEN_META_PACKAGE,
    // A changed package list must not be answered by the memo of the old one.
    memo: `${XEN_META_PACKAGE}-dom0-${hashValue(DOM0_PACKAGES).slice(0, 12)}`,
    kind: CACHE_KIND,
    label: 'xen',
    aptEtc: opts.aptEtc,
    missingHint: `the archive no longer offers ${XEN_META_PACKAGE}; check the apt sources (Debian bookworm has it in main)`,
    resolve: (apt, meta) => resolveDebs(ctx, apt, meta),
    // The libraries move without the hypervisor: every package and version names the entry.
    entryKey: (debs) => `${debs[0]!.package}_${debs[0]!.version}-${hashValue(debs.map((d) => `${d.package}=${d.version}`).sort()).slice(0, 16)}`,
    fixUp: gunzipHypervisor,
    inspect: (dir, main) => inspect(dir, main),
  });
}
