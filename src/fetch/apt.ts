// Debian's source archive through apt, with a PRIVATE configuration: a deb-src sources file
// derived from the system's own Debian entries, private lists and cache directories. The
// system's apt configuration and state are never modified (facts.md).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { DomuError } from '../core/errors.js';
import { run, type ExecEnv } from '../core/exec.js';
import { sha256File } from '../core/hash.js';

export interface AptSourceEntry {
  uris: string[];
  suites: string[];
  components: string[];
  signedBy?: string | undefined;
}

/** Parse deb822 `.sources` text; keeps entries whose Types include `deb`. */
export function parseDeb822(text: string): AptSourceEntry[] {
  const out: AptSourceEntry[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last = '';
    for (const line of stanza.split('\n')) {
      if (line.startsWith('#')) continue;
      if (/^\s/.test(line) && last) {
        fields.set(last, `${fields.get(last)}\n${line.trim()}`);
        continue;
      }
      const m = /^([A-Za-z-]+):\s*(.*)$/.exec(line);
      if (m) {
        last = m[1]!.toLowerCase();
        fields.set(last, m[2]!);
      }
    }
    const types = (fields.get('types') ?? '').split(/\s+/);
    if (!types.includes('deb') || fields.get('enabled')?.toLowerCase() === 'no') continue;
    const words = (k: string) => (fields.get(k) ?? '').split(/\s+/).filter(Boolean);
    out.push({ uris: words('uris'), suites: words('suites'), components: words('components'), signedBy: fields.get('signed-by') });
  }
  return out.filter((e) => e.uris.length && e.suites.length);
}

/** Parse one-line `sources.list` format (`deb [opts] uri suite comp...`). */
export function parseOneLine(text: string): AptSourceEntry[] {
  const out: AptSourceEntry[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    const m = /^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
    if (!m) continue;
    const signed = /signed-by=(\S+)/.exec(m[1] ?? '');
    out.push({ uris: [m[2]!], suites: [m[3]!], components: m[4]!.split(/\s+/).filter(Boolean), signedBy: signed?.[1] });
  }
  return out;
}

const isDebian = (e: AptSourceEntry) =>
  (e.signedBy ?? '').includes('debian-archive-keyring') || e.uris.some((u) => /debian\.org|\/debian(-security)?\/?$/.test(u));

/** The system's Debian archive entries (read only). */
export function systemDebianEntries(etc = '/etc/apt'): AptSourceEntry[] {
  const entries: AptSourceEntry[] = [];
  const read = (p: string) => (existsSync(p) ? readFileSync(p, 'utf8') : '');
  entries.push(...parseOneLine(read(join(etc, 'sources.list'))));
  const dir = join(etc, 'sources.list.d');
  if (existsSync(dir)) {
    for (const n of readdirSync(dir).sort()) {
      if (n.endsWith('.sources')) entries.push(...parseDeb822(read(join(dir, n))));
      else if (n.endsWith('.list')) entries.push(...parseOneLine(read(join(dir, n))));
    }
  }
  return entries.filter(isDebian);
}

/** deb822 sources text of `type` (binary `deb` or source `deb-src`) for the given entries. */
export function renderSources(entries: AptSourceEntry[], type: AptSourceType): string {
  return entries
    .map((e) =>
      [
        `Types: ${type}`,
        `URIs: ${e.uris.join(' ')}`,
        `Suites: ${e.suites.join(' ')}`,
        `Components: ${(e.components.length ? e.components : ['main']).join(' ')}`,
        ...(e.signedBy ? [`Signed-By: ${e.signedBy}`] : []),
      ].join('\n'),
    )
    .join('\n\n')
    .concat('\n');
}

export interface PrivateApt {
  dir: string;
  /** `-o` options that point apt at the private configuration. */
  options: string[];
}

export type AptSourceType = 'deb' | 'deb-src';

export interface PrivateAptOptions {
  /** `deb-src` (default: source packages) or `deb` (binary packages, e.g. the kernel). */
  types?: AptSourceType;
}

/** Create a private apt configuration in `dir` (a scratch directory owned by the run). */
export async function makePrivateApt(dir: string, etc = '/etc/apt', opts: PrivateAptOptions = {}): Promise<PrivateApt> {
  const type = opts.types ?? 'deb-src';
  const entries = systemDebianEntries(etc);
  if (!entries.length) {
    throw new DomuError(`no Debian archive entry found in ${etc}/sources.list or sources.list.d`, {
      hint: 'the distribution fallback needs a Debian apt source; or pass --source PATH|URL',
    });
  }
  const sources = join(dir, `${type}.sources`);
  for (const d of ['parts', 'lists/partial', 'cache/archives/partial']) await mkdir(join(dir, d), { recursive: true });
  await writeFile(sources, renderSources(entries, type));
  const options = [
    `Dir::Etc::SourceList=${sources}`,
    `Dir::Etc::SourceParts=${join(dir, 'parts')}`,
    `Dir::State::Lists=${join(dir, 'lists')}`,
    `Dir::Cache=${join(dir, 'cache')}`,
    'Debug::NoLocking=1',
    'APT::Get::List-Cleanup=0',
    ...(process.getuid?.() === 0 ? ['APT::Sandbox::User=root'] : []),
  ].flatMap((o) => ['-o', o]);
  return { dir, options };
}

export async function aptUpdate(env: ExecEnv, apt: PrivateApt): Promise<void> {
  await run(env, 'apt-get', [...apt.options, '-q', 'update'], { timeoutMs: 300_000, missingHint: 'install apt' });
}

export interface SourceVersion {
  package: string;
  /** Debian version, e.g. 1:1.35.0-4+deb12u1 */
  version: string;
  /** Upstream version, e.g. 1.35.0 */
  upstream: string;
  /** The orig tarball's name and sha256 from the signed Sources index. */
  orig?: { name: string; sha256: string; size: number } | undefined;
}

export function upstreamOf(debianVersion: string): string {
  return debianVersion.replace(/^\d+:/, '').replace(/-[^-]*$/, '').replace(/[+~](dfsg|ds).*$/, '');
}

/** Parse `apt-cache showsrc` output. */
export function parseShowSrc(text: string): SourceVersion[] {
  const out: SourceVersion[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const pkg = /^Package:\s*(\S+)/m.exec(stanza)?.[1];
    const ver = /^Version:\s*(\S+)/m.exec(stanza)?.[1];
    if (!pkg || !ver) continue;
    const sums = /^Checksums-Sha256:\s*\n((?:[ \t].*\n?)*)/m.exec(stanza)?.[1] ?? '';
    let orig: SourceVersion['orig'];
    for (const l of sums.split('\n')) {
      const m = /^\s+([0-9a-f]{64})\s+(\d+)\s+(\S+\.orig\.tar\.\w+)$/.exec(l);
      if (m) orig = { sha256: m[1]!, size: Number(m[2]), name: m[3]! };
    }
    out.push({ package: pkg, version: ver, upstream: upstreamOf(ver), orig });
  }
  return out;
}

export async function showSource(env: ExecEnv, apt: PrivateApt, pkg: string): Promise<SourceVersion[]> {
  const r = await run(env, 'apt-cache', [...apt.options, 'showsrc', pkg], { okExitCodes: [0, 100], quiet: true });
  return parseShowSrc(r.stdout).filter((v) => v.package === pkg);
}

/** Download only the orig tarball of `pkg=version` into `destDir`; returns its path. */
export async function downloadOrigTarball(env: ExecEnv, apt: PrivateApt, sv: SourceVersion, destDir: string): Promise<string> {
  await run(env, 'apt-get', [...apt.options, '-q', 'source', '--download-only', '--tar-only', `${sv.package}=${sv.version}`], {
    cwd: destDir,
    timeoutMs: 600_000,
  });
  const name = sv.orig?.name;
  const found = name && existsSync(join(destDir, name)) ? name : readdirSync(destDir).find((n) => /\.orig\.tar\.\w+$/.test(n));
  if (!found) throw new DomuError(`apt-get source ${sv.package}=${sv.version} gave no orig tarball in ${destDir}`);
  return join(destDir, found);
}

// ---------------------------------------------------------------------------------------------
// Binary packages (a private `deb` configuration): resolve, then download without installing.

/** The candidate version of `pkg` (`apt-cache policy`), or undefined when apt knows none. */
export async function candidateVersion(env: ExecEnv, apt: PrivateApt, pkg: string): Promise<string | undefined> {
  const r = await run(env, 'apt-cache', [...apt.options, 'policy', pkg], { quiet: true });
  const v = /^\s*Candidate:\s*(\S+)/m.exec(r.stdout)?.[1];
  return v && v !== '(none)' ? v : undefined;
}

/** The fields of one deb822 stanza (continuation lines joined with \n). */
export function parseStanza(stanza: string): Record<string, string> {
  const fields: Record<string, string> = {};
  let last = '';
  for (const line of stanza.split('\n')) {
    if (/^\s/.test(line) && last) fields[last] = `${fields[last]}\n${line.trim()}`;
    else {
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
      if (m) fields[(last = m[1]!)] = m[2]!;
    }
  }
  return fields;
}

/** Every stanza of `apt-cache show` output, in order. */
export function parseStanzas(text: string): Record<string, string>[] {
  return text.split(/\n\s*\n/).map(parseStanza);
}

/** The fields of the `apt-cache show pkg=version` stanza. */
export async function showPackage(env: ExecEnv, apt: PrivateApt, pkg: string, version: string): Promise<Record<string, string>> {
  const r = await run(env, 'apt-cache', [...apt.options, 'show', `${pkg}=${version}`], { quiet: true });
  return parseStanza(r.stdout.split(/\n\s*\n/)[0] ?? '');
}

/** The package names of a Depends/Pre-Depends value (first alternative of each, no versions). */
export function dependsNames(value: string | undefined): string[] {
  if (!value) return [];
  return value
    .split(',')
    .map((d) => d.split('|')[0]!.trim().split(/[\s(:]/)[0]!)
    .filter(Boolean);
}

/**
 * `apt-get download` of several packages into `destDir` (nothing is installed), in ONE call:
 * each apt-get process spends ~0.5 s reading the package index before it fetches anything, and
 * apt fetches the files in parallel itself.
 * The .deb paths, in the order asked.
 */
export async function downloadPackages(env: ExecEnv, apt: PrivateApt, debs: readonly { package: string; version: string }[], destDir: string): Promise<string[]> {
  await run(env, 'apt-get', [...apt.options, '-q', 'download', ...debs.map((d) => `${d.package}=${d.version}`)], { cwd: destDir, timeoutMs: 900_000 });
  const names = readdirSync(destDir);
  return debs.map((d) => {
    const found = names.find((n) => n.startsWith(`${d.package}_`) && n.endsWith('.deb'));
    if (!found) throw new DomuError(`apt-get download ${d.package}=${d.version} gave no .deb in ${destDir}`);
    return join(destDir, found);
  });
}

/**
 * The source package a binary stanza was built from: `Source: linux-signed-amd64 (6.1.192+2)`
 * gives linux-signed-amd64; without a Source field it is the binary package's own name.
 */
export function sourcePackageOf(pkg: string, fields: Record<string, string>): string {
  return fields.Source?.trim().split(/\s+/)[0] || pkg;
}

export interface CandidatePackage {
  package: string;
  version: string;
  /** The fields of its stanza (showPackage). */
  fields: Record<string, string>;
}

/** `pkg` at its candidate version with its fields, or undefined when apt has none (e.g. a virtual package). */
export async function candidatePackage(env: ExecEnv, apt: PrivateApt, pkg: string): Promise<CandidatePackage | undefined> {
  const version = await candidateVersion(env, apt, pkg);
  return version === undefined ? undefined : { package: pkg, version, fields: await showPackage(env, apt, pkg, version) };
}

/** The first stanza of each package in `apt-cache show` output, by package name. */
export function firstStanzas(text: string): Map<string, Record<string, string>> {
  const out = new Map<string, Record<string, string>>();
  for (const fields of parseStanzas(text)) {
    if (fields.Package && fields.Version && !out.has(fields.Package)) out.set(fields.Package, fields);
  }
  return out;
}

/**
 * The candidate stanzas of many packages in ONE `apt-cache show --no-all-versions` (an apt-cache
 * call costs 0.5-1 s, mostly reading the index; candidatePackage per name takes two). Names the
 * archive lacks and purely virtual names are simply absent from the result.
 */
export async function candidatePackages(env: ExecEnv, apt: PrivateApt, names: readonly string[]): Promise<CandidatePackage[]> {
  if (!names.length) return [];
  const r = await run(env, 'apt-cache', [...apt.options, 'show', '--no-all-versions', ...names], { okExitCodes: [0, 100], quiet: true });
  return [...firstStanzas(r.stdout).values()].map((f) => ({ package: f.Package!, version: f.Version!, fields: f }));
}

export interface VerifiedDeb {
  package: string;
  version: string;
  /** The .deb's file name as apt-get download wrote it. */
  file: string;
  size: number;
  /** sha256 of the .deb, equal to the SHA256 field of the archive's Packages index. */
  sha256: string;
}

/**
 * Prove downloaded .debs against the SHA256 and Size of the archive's (signed) Packages index,
 * read with one `apt-cache show` call. Throws on any difference.
 */
export async function verifyDebs(env: ExecEnv, apt: PrivateApt, debs: readonly { package: string; version: string }[], files: readonly string[]): Promise<VerifiedDeb[]> {
  const r = await run(env, 'apt-cache', [...apt.options, 'show', ...debs.map((d) => `${d.package}=${d.version}`)], { quiet: true });
  const stanzas = parseStanzas(r.stdout).filter((f) => f.Package && f.Version);
  const out: VerifiedDeb[] = [];
  for (const [i, d] of debs.entries()) {
    const file = files[i]!;
    const index = stanzas.filter((f) => f.Package === d.package && f.Version === d.version && /^[0-9a-f]{64}$/.test(f.SHA256 ?? ''));
    if (!index.length) throw new DomuError(`${d.package} ${d.version}: the archive's index gives no SHA256 to check ${basename(file)} against`);
    const actual = await sha256File(file);
    const size = (await stat(file)).size;
    // One version may be offered by several archives (index stanzas): the file must be one of them.
    if (!index.some((f) => f.SHA256 === actual && Number(f.Size) === size)) {
      throw new DomuError(`${basename(file)}: sha256 ${actual} (${size} bytes) is not the ${d.package} ${d.version} of the archive's index (sha256 ${index[0]!.SHA256}, ${index[0]!.Size} bytes)`, {
        hint: 'a proxy or mirror delivered other bytes; run again, or check the apt sources',
      });
    }
    out.push({ package: d.package, version: d.version, file: basename(file), size, sha256: actual });
  }
  return out;
}
