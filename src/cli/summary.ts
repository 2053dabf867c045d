// The run summary: one JSON document under --json, a few plain lines otherwise.
import type { Plan } from '../pipeline/plan.js';
import type { StageRecord } from '../pipeline/run.js';
import { DOMU_VERSION } from './version.js';

export interface Summary {
  ok: boolean;
  command: string;
  exitCode: number;
  error?: { message: string; hint?: string | undefined };
  stages: StageRecord[];
  warnings: { stage: string; message: string }[];
  versions: Record<string, unknown>;
  busybox?: Record<string, unknown>;
  notYetAvailable?: string[];
  image?: Record<string, unknown>;
  log?: string;
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
    ...(plan.notYetAvailable.length ? { notYetAvailable: plan.notYetAvailable } : {}),
    ...extra,
  };
}

export function formatSummary(sum: Summary): string {
  const lines: string[] = [];
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
  for (const w of sum.warnings) lines.push(`warning: ${w.stage ? `${w.stage}: ` : ''}${w.message}`);
  if (sum.notYetAvailable?.length) {
    lines.push(`not yet available in domu ${DOMU_VERSION}: ${sum.notYetAvailable.join(', ')}${img ? '' : ' — no image was built'}`);
  }
  if (sum.log) lines.push(`log: ${sum.log}`);
  return lines.join('\n');
}
