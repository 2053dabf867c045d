// `domu doctor`: every program the pipeline needs, with its version, and the apt-get line
// for whatever is missing; on a Dom0, the hypervisor (`xl info`) and whether the description's
// xen.type can live-migrate on it.
import { existsSync } from 'node:fs';
import { which } from '../core/exec.js';
import { loadDescription } from '../model/description.js';
import { xenType } from '../model/schema.js';
import { memoryLogger } from '../core/log.js';
import { prerequisites, programVersion } from '../core/prereqs.js';
import { liveMigrationProblem, probeHypervisor, type Hypervisor } from '../xen/hypervisor.js';

export interface DoctorRow {
  program: string;
  package: string;
  why: string;
  path: string | null;
  version: string | null;
}

export interface DoctorReport {
  ok: boolean;
  programs: DoctorRow[];
  missingPackages: string[];
  install: string | null;
  node: string;
  xen: { hypervisor: Hypervisor | null; absent: string | null; type: 'pv' | 'pvh' | null; warning: string | null };
}

/** `type`: the description's xen.type (null when it could not be read). */
export async function doctor(type: 'pv' | 'pvh' | null = null): Promise<DoctorReport> {
  const rows = await Promise.all(
    prerequisites()
      .filter((p) => p.program)
      .map(async (p): Promise<DoctorRow> => {
        const path = (await which(p.program!)) ?? null;
        return { program: p.program!, package: p.package, why: p.why, path, version: path ? await programVersion(path, p.program!) : null };
      }),
  );
  const missingPackages = [...new Set(rows.filter((r) => !r.path).map((r) => r.package))];
  const probe = await probeHypervisor({ log: memoryLogger(), signal: new AbortController().signal });
  const hypervisor = 'hypervisor' in probe ? probe.hypervisor : null;
  const warning = hypervisor && type ? (liveMigrationProblem(type, hypervisor.virtCaps) ?? null) : null;
  const root = process.getuid?.() === 0;
  return {
    ok: missingPackages.length === 0,
    programs: rows,
    missingPackages,
    install: missingPackages.length ? `${root ? '' : 'sudo '}apt-get install -y --no-install-recommends ${missingPackages.join(' ')}` : null,
    node: process.version,
    xen: { hypervisor, absent: 'absent' in probe ? probe.absent : null, type, warning: warning && `xen.type ${type}: ${warning}${type === 'pv' ? '; use xen.type: pvh' : ''}` },
  };
}

export function formatDoctor(r: DoctorReport): string {
  const w = Math.max(...r.programs.map((p) => p.program.length));
  const lines = r.programs.map((p) => `${p.path ? 'ok     ' : 'MISSING'} ${p.program.padEnd(w)}  ${(p.version ?? '-').padEnd(10)} ${p.package}: ${p.why}`);
  lines.push(`ok      ${'node'.padEnd(w)}  ${r.node}`);
  const x = r.xen;
  lines.push(x.hypervisor ? `xen     ${'xl info'.padEnd(w)}  ${x.hypervisor.version.padEnd(10)} virt_caps: ${x.hypervisor.virtCaps.join(' ')}` : `-       ${'xl info'.padEnd(w)}  ${x.absent}`);
  if (x.warning) lines.push(`warning: ${x.warning}`);
  lines.push(r.ok ? 'all prerequisites present' : `missing: ${r.missingPackages.join(' ')}\ninstall them with:\n  ${r.install}`);
  return lines.join('\n');
}

/** xen.type of the description (`file`, else ./guest.yaml when present); null when there is none or it does not load. */
export function descriptionType(file: string | undefined): 'pv' | 'pvh' | null {
  const f = file ?? (existsSync('guest.yaml') ? 'guest.yaml' : undefined);
  if (f === undefined) return null;
  try {
    return xenType(loadDescription({ file: f }));
  } catch {
    return null;
  }
}
