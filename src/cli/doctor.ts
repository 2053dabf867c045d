// `domu doctor`: every program the pipeline needs, with its version, and the apt-get line
// for whatever is missing.
import { ExecError, run, which } from '../lib/exec.js';
import { memoryLogger } from '../lib/log.js';
import { prerequisites, VERSION_ARGS } from '../lib/prereqs.js';

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

async function versionOf(path: string, program: string): Promise<string | null> {
  const env = { log: memoryLogger(), signal: AbortSignal.timeout(10_000) };
  let text: string;
  try {
    const r = await run(env, path, VERSION_ARGS[program] ?? ['--version'], { quiet: true });
    text = `${r.stdout}\n${r.stderr}`;
  } catch (e) {
    // Some programs print their version and exit non-zero (e.g. e2fsprogs' -V on old releases).
    if (!(e instanceof ExecError)) return null;
    text = `${e.stdout}\n${e.stderr}`;
  }
  const line = text
    .split('\n')
    .map((l) => l.trim())
    .find((l) => /\d+\.\d+/.test(l));
  return line ? line.replace(/^.*?(\d+\.\d+[\w.+~-]*).*$/, '$1') : null;
}

export async function doctor(): Promise<DoctorReport> {
  const rows = await Promise.all(
    prerequisites()
      .filter((p) => p.program)
      .map(async (p): Promise<DoctorRow> => {
        const path = (await which(p.program!)) ?? null;
        return { program: p.program!, package: p.package, why: p.why, path, version: path ? await versionOf(path, p.program!) : null };
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
