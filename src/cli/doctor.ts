// `domu doctor`: every program the pipeline needs, with its version, and the apt-get line
// for whatever is missing.
import { which } from '../core/exec.js';
import { prerequisites, programVersion } from '../core/prereqs.js';

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
}

export async function doctor(): Promise<DoctorReport> {
  const rows = await Promise.all(
    prerequisites()
      .filter((p) => p.program)
      .map(async (p): Promise<DoctorRow> => {
        const path = (await which(p.program!)) ?? null;
        return { program: p.program!, package: p.package, why: p.why, path, version: path ? await programVersion(path, p.program!) : null };
      }),
  );
  const missingPackages = [...new Set(rows.filter((r) => !r.path).map((r) => r.package))];
  const root = process.getuid?.() === 0;
  return {
    ok: missingPackages.length === 0,
    programs: rows,
    missingPackages,
    install: missingPackages.length ? `${root ? '' : 'sudo '}apt-get install -y --no-install-recommends ${missingPackages.join(' ')}` : null,
    node: process.version,
  };
}

export function formatDoctor(r: DoctorReport): string {
  const w = Math.max(...r.programs.map((p) => p.program.length));
  const lines = r.programs.map((p) => `${p.path ? 'ok     ' : 'MISSING'} ${p.program.padEnd(w)}  ${(p.version ?? '-').padEnd(10)} ${p.package}: ${p.why}`);
  lines.push(`ok      ${'node'.padEnd(w)}  ${r.node}`);
  lines.push(r.ok ? 'all prerequisites present' : `missing: ${r.missingPackages.join(' ')}\ninstall them with:\n  ${r.install}`);
  return lines.join('\n');
}
