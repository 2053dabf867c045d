// The xen configs stage (design.md, "xen configs"): from the validated inventory, every file the
// lab's Dom0s and storage server need, rendered from the handlebars templates in xen-configs/:
//   xen/<host>/<guest>.cfg        the domain config per Dom0 (xl or xm dialect, xen.toolstack)
//   xen/<guest>.MIGRATION.md      the exact commands to start and migrate the guest
//   hosts/<host>/ifcfg-<bridge>   the bridge, and ifcfg-<nic> the NIC in it (reference lab)
//   hosts/<host>/xend-relocation.sxp  (xm only: xend is gone with xl) relocation restricted to
//                                 the other Dom0s
//   storage/targets.conf          the tgt target of the shared store
// Every file starts with the generated-file header (genheader.ts). Rendering is pure and
// happens completely in memory before anything is written; templates are strict (a missing
// value is an error, never an empty string) and every value goes through quoted()/raw() checks.
// Migration consistency: kernel, ramdisk, disk target and bridge must be the same for every host.
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { tempPathFor } from '../core/atomic.js';
import { sha256 } from '../core/hash.js';
import { DomuError, InputError } from '../core/errors.js';
import { findNoSpace, noSpaceError } from '../core/stage-errors.js';
import { checkHeader, withHeader, type CommentStyle } from '../store/genheader.js';
import { projectPath } from '../core/paths.js';
import { derivedMac, derivedUuid, guestCmdline, guestExtra, quoted, relocationAllow } from '../xen/xencfg.js';
import { GUEST_LUN, lunDevicePath, STORE_LUN } from '../xen/lun.js';
import { xenType, type Description } from '../model/schema.js';
import type { StageContext } from '../core/context.js';
import { DOMU_VERSION } from '../core/version.js';

export const TEMPLATE_DIR = projectPath('xen-configs');

// handlebars is loaded on the first template compiled: a render kept in the cache needs none
// (xenconfigs-kept.ts).
const handlebars = () => createRequire(import.meta.url)('handlebars') as typeof import('handlebars');

export interface BootFiles {
  /** The kernel's file name in the store's boot/ (when shipped), e.g. vmlinuz-6.1.0-56-amd64. */
  kernel?: string | undefined;
  /** The ramdisk's file name in boot/ (when there is one and it is shipped). */
  ramdisk?: string | undefined;
}

export interface GeneratedFile {
  /** Relative to the output (store-shaped) directory. */
  path: string;
  content: string;
  template: string;
}

export interface RenderOptions {
  allowInconsistent?: boolean;
  /** Another template directory (tests). */
  templateDir?: string;
}

export interface RenderResult {
  files: GeneratedFile[];
  warnings: string[];
  /** What every host's config names (the consistent set). */
  domain: { kernel: string; ramdisk: string | null; disk: string; bridge: string; mac: string; uuid: string };
}

const compiled = new Map<string, HandlebarsTemplateDelegate>();

function template(dir: string, name: string): HandlebarsTemplateDelegate {
  const path = join(dir, name);
  let t = compiled.get(path);
  if (!t) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      throw new DomuError(`template ${path} cannot be read`, { hint: 'reinstall domu-builder: xen-configs/ is part of it' });
    }
    const hb = handlebars().create();
    hb.registerHelper('q', (value: unknown, key: unknown) => {
      if (typeof value !== 'string' && typeof value !== 'number') throw new DomuError(`${name}: no value for ${String(key)}`);
      return quoted(String(value), String(key));
    });
    // A value inside a quoted list item (disk, vif): the same checks, without quotes.
    hb.registerHelper('raw', (value: unknown, key: unknown) => {
      if (typeof value !== 'string') throw new DomuError(`${name}: no value for ${String(key)}`);
      return quoted(value, String(key)).slice(1, -1);
    });
    t = hb.compile(text, { strict: true, noEscape: true });
    compiled.set(path, t);
  }
  return t;
}

function render(dir: string, name: string, data: object, style: CommentStyle = '#'): string {
  let body: string;
  try {
    body = template(dir, name)(data);
  } catch (e) {
    if (e instanceof DomuError) throw e;
    // Strict mode: "x" not defined — a template that asks for a value the inventory has not.
    throw new DomuError(`template ${name}: ${(e as Error).message}`, { hint: 'the template asks for a value domu does not provide; fix the template' });
  }
  return withHeader(body, { generator: 'domu-builder', version: DOMU_VERSION, source: `xen-configs/${name}`, style });
}

interface HostDomain {
  kernel: string;
  ramdisk: string | null;
  disk: string;
  bridge: string;
}

/** What the domain config names on `host` (its overrides applied). */
function hostDomain(desc: Description, host: Description['hosts'][number], boot: BootFiles): HostDomain {
  const storePath = host.store_path ?? desc.store.path;
  const shipped = (file: string | undefined) => (file ? `${storePath}/boot/${file}` : undefined);
  const kernel = host.kernel ?? (desc.kernel.ship ? shipped(boot.kernel) : desc.kernel.image);
  if (!kernel || kernel === 'auto') {
    throw new InputError('kernel.ship is false and kernel.image is auto: the domain configs need the kernel\'s path on the Dom0s', 'set kernel.image to a path that exists on every Dom0, or kernel.ship: true');
  }
  const given = desc.kernel.ramdisk;
  const ramdisk = host.ramdisk ?? (desc.kernel.ship ? shipped(boot.ramdisk) : given === 'none' || given === 'generate' ? undefined : given);
  // store.disk lun: the LUN's by-path name, the same on every Dom0 whatever its store_path.
  const disk = desc.store.disk === 'lun' ? lunDevicePath(desc) : `${storePath}/${desc.image.file}`;
  return { kernel, ramdisk: ramdisk ?? null, disk, bridge: host.bridge };
}

/**
 * The warning for store.disk: file with more than one Dom0 (said once a run, by the xen configs
 * stage): the reference lab's layout silently corrupts a guest that migrates.
 */
export function fileDiskWarning(desc: Description): string | undefined {
  if (desc.store.disk !== 'file' || desc.hosts.length < 2) return undefined;
  return (
    `store.disk: file with ${desc.hosts.length} hosts: the guest's disk is the image file ${desc.store.path}/${desc.image.file} on an ext4 store mounted read-write on several Dom0s; ` +
    'blocks the guest allocates on one host are invisible to the other, so after a migration the new host can read stale data: silent corruption. Use store.disk: lun'
  );
}

/** Every host must name the same kernel, ramdisk, disk and bridge; else an error per difference. */
function checkConsistency(desc: Description, domains: HostDomain[], allow: boolean): string[] {
  const problems: string[] = [];
  const first = desc.hosts[0]!;
  const keyOf: Record<keyof HostDomain, string> = { kernel: 'kernel', ramdisk: 'ramdisk', disk: 'store_path', bridge: 'bridge' };
  domains.forEach((d, i) => {
    if (i === 0) return;
    for (const k of ['kernel', 'ramdisk', 'disk', 'bridge'] as const) {
      if (d[k] !== domains[0]![k]) {
        const h = desc.hosts[i]!;
        problems.push(`hosts.${i}.${keyOf[k]} (${h.name}): the ${k === 'disk' ? 'disk target' : k} ${JSON.stringify(d[k])} differs from ${JSON.stringify(domains[0]![k])} on hosts.0 (${first.name}): live migration needs the same ${k === 'disk' ? 'disk path' : k} on every host`);
      }
    }
  });
  if (problems.length && !allow) {
    throw new InputError(problems.join('\n'), 'make the hosts agree, or pass --allow-inconsistent to write the configs anyway (migration between those hosts will fail)');
  }
  return problems;
}

/** Render every generated file of the inventory (pure: nothing is read but the templates). */
export function renderConfigs(desc: Description, boot: BootFiles, opts: RenderOptions = {}): RenderResult {
  const dir = opts.templateDir ?? TEMPLATE_DIR;
  const g = desc.guest;
  const domains = desc.hosts.map((h) => hostDomain(desc, h, boot));
  const warnings = checkConsistency(desc, domains, opts.allowInconsistent ?? false);
  if (desc.hosts.length < 2) warnings.push(`only one host (${desc.hosts[0]!.name}): there is no other Dom0 to migrate to`);
  const mac = g.mac ?? derivedMac(g.name);
  const uuid = derivedUuid(g.name);
  const xen = { ...desc.xen, type: xenType(desc) };
  const lun = desc.store.disk === 'lun';
  const common = { guest: g, store: desc.store, xen, pvh: xen.type === 'pvh', lun, lunNumber: GUEST_LUN, storeLun: STORE_LUN, network: desc.network, uuid, mac, maxmem: g.maxmem ?? g.memory };
  const domainTemplate = desc.xen.toolstack === 'xm' ? 'domain.xm.cfg.hbs' : 'domain.xl.cfg.hbs';
  const files: GeneratedFile[] = [];
  const configPath = (h: Description['hosts'][number]) => `xen/${h.name}/${g.name}.cfg`;
  // xend's allow-list: every Dom0; each host's own address is dropped from its copy below.
  const addresses = desc.hosts.map((h) => h.address);

  desc.hosts.forEach((host, i) => {
    const d = domains[i]!;
    const hostData = { ...host, hwaddr: undefined };
    const data = { ...common, host: hostData, ...d, cmdline: guestCmdline(g.root, g.extra), extra: guestExtra(g.extra) };
    files.push({ path: configPath(host), content: render(dir, domainTemplate, data), template: domainTemplate });
    const hostDir = `hosts/${host.name}`;
    files.push({ path: `${hostDir}/ifcfg-${host.bridge}`, content: render(dir, 'ifcfg-xenbr0.hbs', { ...common, host: hostData }), template: 'ifcfg-xenbr0.hbs' });
    files.push({
      path: `${hostDir}/ifcfg-${host.nic}`,
      content: render(dir, 'ifcfg-eth0.hbs', { ...common, host: hostData, hwaddr: host.hwaddr ? host.hwaddr.toUpperCase() : null }),
      template: 'ifcfg-eth0.hbs',
    });
    if (desc.xen.toolstack === 'xm') {
      const others = addresses.filter((a) => a !== host.address);
      files.push({ path: `${hostDir}/xend-relocation.sxp`, content: render(dir, 'xend-relocation.sxp.hbs', { ...common, host: hostData, allow: relocationAllow(others) }), template: 'xend-relocation.sxp.hbs' });
    }
  });

  const d0 = domains[0]!;
  const hosts = desc.hosts.map((h) => ({ name: h.name, address: h.address, config: `${h.store_path ?? desc.store.path}/${configPath(h)}` }));
  const migration = { ...common, ...d0, storePath: desc.store.path, hosts, first: hosts[0], second: hosts[1] ?? hosts[0] };
  files.push({ path: `xen/${g.name}.MIGRATION.md`, content: render(dir, 'MIGRATION.md.hbs', migration, 'html'), template: 'MIGRATION.md.hbs' });
  files.push({ path: 'storage/targets.conf', content: render(dir, 'tgt-targets.conf.hbs', common), template: 'tgt-targets.conf.hbs' });
  return { files, warnings, domain: { ...d0, mac, uuid } };
}

export interface XenConfigsOutput {
  files: string[];
  /** sha256 of each file's content, by path (what is now in --out). */
  sha256: Record<string, string>;
  written: number;
  unchanged: number;
  /** Generated files of an earlier run that this inventory no longer has (removed from --out). */
  removed: string[];
  warnings: string[];
  domain: RenderResult['domain'];
}

/**
 * Files under `root/sub` that are not in `wanted` and carry our generated-file header (relative
 * paths): only those need their head read, so a rerun over thousands of files stays a listing.
 */
function staleGeneratedFiles(root: string, sub: string, wanted: ReadonlySet<string>): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    let entries;
    try {
      entries = readdirSync(join(root, rel), { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const r = `${rel}/${e.name}`;
      if (e.isDirectory()) walk(r);
      else if (e.isFile() && !wanted.has(r) && checkHeader(readHead(join(root, r))).generated) out.push(r);
    }
  };
  walk(sub);
  return out;
}

/** The first 512 bytes of a file (enough for the header), as text. */
function readHead(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(512);
    return buf.toString('utf8', 0, readSync(fd, buf, 0, 512, 0));
  } finally {
    closeSync(fd);
  }
}

function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * Write the rendered files into `outDir`, each through a temporary name and a rename; drop our
 * stale ones (generated files of hosts that left the inventory). All or nothing: every changed
 * file is written to its temporary name first, and only when all are written are they renamed
 * into place, so a full --out (or any write error) leaves the previous configs as they were (and
 * no temporary file, and no directory this call made). Synchronous on purpose: tens of
 * thousands of small files for large inventories, where a thread-pool hop per call costs more
 * than the call (and no signal handler runs in between). No fsync: --out is regenerated at will;
 * publishing to the store fsyncs.
 */
export async function writeConfigs(result: RenderResult, outDir: string, ctx: StageContext): Promise<XenConfigsOutput> {
  let written = 0;
  let unchanged = 0;
  const wanted = new Set(result.files.map((f) => f.path));
  const made = new Set<string>();
  /** Directories this call created, parents first. */
  const created: string[] = [];
  const pending: { tmp: string; target: string }[] = [];
  try {
    for (const f of result.files) {
      const target = join(outDir, f.path);
      if (readIfExists(target) === f.content) {
        unchanged++;
        continue;
      }
      const dir = dirname(target);
      if (!made.has(dir)) {
        const first = mkdirSync(dir, { recursive: true });
        if (first !== undefined) {
          const chain: string[] = [];
          for (let d = dir; d !== dirname(first); d = dirname(d)) chain.unshift(d);
          created.push(...chain);
        }
        made.add(dir);
      }
      const tmp = tempPathFor(target);
      pending.push({ tmp, target });
      writeFileSync(tmp, f.content, { mode: 0o644 });
    }
  } catch (e) {
    for (const p of pending) rmSync(p.tmp, { force: true });
    for (const d of created.reverse()) {
      try {
        rmdirSync(d);
      } catch {
        // not empty: something else is in it
      }
    }
    const full = findNoSpace(e);
    if (full) {
      throw noSpaceError({ code: full.code, dir: outDir, role: 'out', doing: 'writing the Xen configs', note: 'the configs there are unchanged', cause: e });
    }
    throw e;
  }
  try {
    for (const p of pending) {
      renameSync(p.tmp, p.target);
      written++;
    }
  } catch (e) {
    for (const p of pending.slice(written)) rmSync(p.tmp, { force: true });
    throw e;
  }
  const removed: string[] = [];
  for (const sub of ['xen', 'hosts', 'storage']) {
    for (const rel of staleGeneratedFiles(outDir, sub, wanted)) {
      rmSync(join(outDir, rel), { force: true });
      removed.push(rel);
      try {
        rmdirSync(dirname(join(outDir, rel))); // a host directory left empty
      } catch {
        // not empty: other files are still there
      }
    }
  }
  for (const w of result.warnings) ctx.log.warn(w);
  ctx.log.info(`xen configs: ${result.files.length} files (${written} written, ${unchanged} unchanged${removed.length ? `, ${removed.length} stale removed` : ''}) in ${outDir}`);
  const hashes = Object.fromEntries(result.files.map((f) => [f.path, sha256(f.content)]));
  return { files: result.files.map((f) => f.path), sha256: hashes, written, unchanged, removed, warnings: result.warnings, domain: result.domain };
}
