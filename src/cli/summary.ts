// The run summary: one JSON document under --json, a few plain lines otherwise.
import { statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Plan } from '../pipeline/plan.js';
import type { ModuleSet } from '../stages/modules.js';
import type { StageRecord } from '../pipeline/run.js';
import { DOMU_VERSION } from '../core/version.js';

export interface Summary {
  ok: boolean;
  command: string;
  exitCode: number;
  error?: { message: string; hint?: string | undefined };
  stages: StageRecord[];
  warnings: { stage: string; message: string }[];
  versions: Record<string, unknown>;
  busybox?: Record<string, unknown>;
  image?: Record<string, unknown>;
  kernel?: Record<string, unknown>;
  modules?: ModuleReport;
  boot?: { kernel: string; ramdisk?: string | undefined };
  configs?: { files: string[]; written: number; unchanged: number; removed: string[]; domain: Record<string, unknown> };
  /** Every artifact of a complete build (paths absolute), and whether anything changed. */
  artifacts?: { path: string; apparentBytes: number; allocatedBytes: number; sha256: string }[];
  upToDate?: boolean;
  /** Where the build deviated from what was asked, in plain words. */
  substitutions?: string[];
  published?: {
    store: string;
    written: string[];
    unchanged: string[];
    backups: string[];
    previousImage?: string | undefined;
    lockWaitMs: number;
    /** store.disk lun: the device the image went onto, bytes written and checked. */
    lun?: { device: string; kind: string; bytesWritten: number; bytesChecked: number; sha256: string } | undefined;
  };
  /** Where the guest's disk lives (store.disk), for the commands that render or publish it. */
  store?: { disk: 'file' | 'lun'; path: string };
  log?: string;
}

export interface ModuleReport {
  release: string;
  requests: { request: string; modules: string[] }[];
  /** Load order. */
  modules: { name: string; path: string; file: string; size: number; depends: string[]; softdepPre: string[]; vermagic: string; verdict: string; kind: string; via: string[] }[];
  builtin: string[];
  warnings: string[];
  index: string;
}

export function moduleReport(set: ModuleSet): ModuleReport {
  return {
    release: set.release,
    requests: set.closure.requests,
    modules: set.closure.modules.map((m, i) => ({
      name: m.name,
      path: m.path,
      file: m.file,
      size: statSync(m.file).size,
      depends: m.info.depends,
      softdepPre: m.info.softdepPre,
      vermagic: m.info.release,
      verdict: set.verdicts[i]!.verdict,
      kind: m.kind,
      via: m.via,
    })),
    builtin: set.closure.builtin.map((b) => b.name),
    warnings: set.closure.warnings,
    index: set.index.source,
  };
}

export function buildSummary(plan: Plan, records: StageRecord[], warnings: { scope: string; message: string }[], extra: Partial<Summary>): Summary {
  const s = plan.state.source;
  const busybox = s
    ? {
        path: s.tarball,
        requestedVersion: s.requestedVersion,
        resolvedVersion: s.resolvedVersion,
        sha256: s.sha256,
        provider: s.provider,
        origin: s.origin,
        substitution: s.substitution ?? null,
        ...(plan.state.extract ? { tree: plan.state.extract.tree } : {}),
      }
    : undefined;
  return {
    ok: true,
    command: plan.command,
    exitCode: 0,
    stages: records,
    warnings: warnings.map((w) => ({ stage: w.scope.split('/')[0] ?? '', message: w.message })),
    versions: {
      domu: DOMU_VERSION,
      node: process.version,
      busybox: { requested: plan.description.busybox.version, resolved: s?.resolvedVersion ?? null },
      libc: plan.description.busybox.libc,
    },
    ...(busybox ? { busybox } : {}),
    ...(plan.state.image ? { image: { ...plan.state.image } } : {}),
    ...(plan.state.kernel ? { kernel: { ...plan.state.kernel } } : {}),
    ...(plan.state.moduleSet ? { modules: moduleReport(plan.state.moduleSet) } : plan.state.modules ? { modules: moduleReport(plan.state.modules.set) } : {}),
    ...(plan.state.boot ? { boot: plan.state.boot } : {}),
    ...(plan.state.configs ? { configs: { ...plan.state.configs } } : {}),
    ...(plan.state.published ? { published: { ...plan.state.published } } : {}),
    ...(plan.command === 'build' || plan.command === 'configs' ? { store: { disk: plan.description.store.disk, path: plan.description.store.path } } : {}),
    ...(plan.state.record ? artifactsOf(plan) : {}),
    ...extra,
  };
}

/** The build record's artifacts with absolute paths, and the substitutions in plain words. */
function artifactsOf(plan: Plan): Pick<Summary, 'artifacts' | 'upToDate' | 'substitutions'> {
  const r = plan.state.record!;
  const out = dirname(plan.state.image!.path);
  const abs = (a: { path: string; apparentBytes: number; allocatedBytes: number; sha256: string }) => ({ ...a, path: join(out, a.path) });
  const artifacts = [r.image, r.boot.kernel, r.boot.ramdisk].flatMap((a) => (a ? [abs(a)] : []));
  // The config files' hashes come from the stage that wrote them; only their sizes are read here.
  const hashes = plan.state.configs!.sha256;
  for (const f of r.configs) {
    const p = join(out, f);
    const st = statSync(p);
    artifacts.push({ path: p, apparentBytes: st.size, allocatedBytes: st.blocks * 512, sha256: hashes[f]! });
  }
  const substitutions: string[] = [];
  const sub = r.busybox.substitution;
  if (sub) substitutions.push(`busybox ${sub.used} was built instead of the requested ${sub.requested}: ${sub.reason} (from ${sub.from})`);
  if (r.kernel?.origin === 'package') substitutions.push(`the guest kernel ${r.kernel.release} is Debian's package ${r.kernel.package} ${r.kernel.version} (this host has no kernel of its own to use)`);
  return { artifacts, substitutions, upToDate: plan.state.upToDate ?? false };
}

export function formatSummary(sum: Summary): string {
  const lines: string[] = [];
  if (sum.artifacts) return formatBuild(sum, lines);
  const out = (name: string) => sum.stages.find((x) => x.name === name)?.outputs as Record<string, unknown> | undefined;
  const v = sum.command === 'verify' ? out('verify') : undefined;
  if (v) {
    const mods = (v.modules as { name: string; verdict: string }[]).map((m) => `${m.name} ${m.verdict}`).join(', ');
    const a = v.applets as { found: number; expected: number | null };
    lines.push(`verified: the guest reached its ready marker in ${(v.secondsToMarker as number).toFixed(1)} s (${String(v.accel)}); ${a.found} applets${a.expected === null ? '' : ` of ${a.expected}`}; modules: ${mods || 'none'}`);
    lines.push(`  console log ${String(v.consoleLog)}`);
  }
  const rel = sum.command === 'release' ? out('release') : undefined;
  if (rel) {
    lines.push(`release ${String(rel.dir)} (${String(rel.status)})`);
    for (const f of rel.files as { name: string; sha256: string }[]) lines.push(`  ${f.name}  sha256 ${f.sha256}`);
  }
  const b = sum.busybox;
  if (b) {
    lines.push(`busybox ${b.resolvedVersion} (${b.provider}: ${b.origin})`);
    lines.push(`  tarball ${b.path}`);
    lines.push(`  sha256  ${b.sha256}`);
    if (b.tree) lines.push(`  tree    ${b.tree}`);
  }
  const img = sum.image as { path: string; apparentBytes: number; allocatedBytes: number; sha256: string; populate: string } | undefined;
  if (img) {
    const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
    lines.push(`image ${img.path}`);
    lines.push(`  size    ${mib(img.apparentBytes)} apparent, ${mib(img.allocatedBytes)} allocated (sparse; populated ${img.populate})`);
    lines.push(`  sha256  ${img.sha256}`);
  }
  const k = sum.kernel as { release: string; origin: string; image?: string; modulesDir: string } | undefined;
  if (k) lines.push(`kernel ${k.release} (${k.origin}): ${k.image ?? `modules ${k.modulesDir} (no kernel image beside them)`}`);
  if (sum.modules) lines.push(...formatModules(sum.modules));
  if (sum.boot) {
    lines.push(`boot ${sum.boot.kernel}`);
    if (sum.boot.ramdisk) lines.push(`  ramdisk ${sum.boot.ramdisk}`);
  }
  if (sum.configs) {
    const c = sum.configs;
    lines.push(`configs ${c.files.length} files (${c.written} written, ${c.unchanged} unchanged${c.removed.length ? `, ${c.removed.length} stale removed` : ''})`);
    const cfgs = c.files.filter((x) => x.startsWith('xen/'));
    if (cfgs.length <= 12) for (const f of cfgs) lines.push(`  ${f}`);
  }
  return closingLines(sum, lines);
}

/** A complete build: every artifact, the substitutions in plain words, whether it was up to date. */
function formatBuild(sum: Summary, lines: string[]): string {
  const mib = (n: number) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);
  lines.push(sum.upToDate ? 'up to date: every stage hit the cache; nothing in the output was rewritten' : 'built:');
  const rows = sum.artifacts!.filter((a, i) => i < 3 || sum.artifacts!.length <= 15);
  for (const a of rows) lines.push(`  ${a.path}  ${mib(a.apparentBytes)} apparent, ${mib(a.allocatedBytes)} allocated  sha256 ${a.sha256}`);
  if (rows.length < sum.artifacts!.length) lines.push(`  … and ${sum.artifacts!.length - rows.length} more config files (all listed in --json)`);
  for (const t of sum.substitutions ?? []) lines.push(`note: ${t}`);
  if (sum.modules) lines.push(`modules: ${sum.modules.modules.map((m) => m.name).join(' ') || 'none'} (vermagic ${sum.modules.release})`);
  return closingLines(sum, lines);
}

/** The last lines of every plain summary: where it was published, the warnings, the log. */
function closingLines(sum: Summary, lines: string[]): string {
  if (sum.published) {
    const p = sum.published;
    lines.push(`published to ${p.store}: ${p.written.length} written, ${p.unchanged.length} unchanged${p.backups.length ? `, ${p.backups.length} .bak kept` : ''}${p.previousImage ? `; previous image kept as ${p.previousImage}` : ''}`);
    if (p.lun) lines.push(`image onto the LUN ${p.lun.device} (${p.lun.kind}): ${p.lun.bytesWritten} bytes written, ${p.lun.bytesChecked} bytes checked, sha256 ${p.lun.sha256}`);
  }
  for (const w of sum.warnings) lines.push(`warning: ${w.stage ? `${w.stage}: ` : ''}${w.message}`);
  if (sum.log) lines.push(`log: ${sum.log}`);
  return lines.join('\n');
}

/** The closure as a table: load order, size, vermagic verdict, why it is there. */
export function formatModules(r: ModuleReport): string[] {
  const lines = [`modules for ${r.release} (index: ${r.index}), in load order:`];
  const width = Math.max(4, ...r.modules.map((m) => m.name.length));
  for (const [i, m] of r.modules.entries()) {
    const why = m.kind === 'requested' ? 'requested' : `${m.kind} of ${m.via.slice(0, -1).join(' → ') || '?'}`;
    const deps = m.depends.length ? m.depends.join(',') : '-';
    lines.push(`  ${String(i + 1).padStart(2)}. ${m.name.padEnd(width)} ${`${Math.round(m.size / 1024)} KiB`.padStart(8)}  vermagic ${m.vermagic} ${m.verdict}  depends ${deps}  (${why})`);
  }
  for (const b of r.builtin) lines.push(`  built in: ${b} (nothing to load)`);
  return lines;
}
