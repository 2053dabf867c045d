// Run the real `domu` CLI as a child process, as users run it: bin/domu.js and the compiled
// build/ (kept up to date with src/ by test/helpers/global-setup.ts).
import { execa, type ResultPromise } from 'execa';
import { PROJECT_ROOT } from '../../src/core/paths.js';

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** The CLI's entry point in a copy of the project (the argument vector of `node`, after node itself). */
export const domuBin = (root = PROJECT_ROOT): string => `${root}/bin/domu.js`;

export interface DomuOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** Another copy of the project to run (test/helpers/vouched-domu.ts); default this checkout. */
  root?: string;
}

export function startDomu(args: string[], opts: DomuOptions = {}): ResultPromise<{ reject: false }> {
  const root = opts.root ?? PROJECT_ROOT;
  return execa(process.execPath, [domuBin(root), ...args], {
    cwd: opts.cwd ?? root,
    env: { ...opts.env, NODE_OPTIONS: '' },
    reject: false,
    stdin: 'ignore',
  }) as ResultPromise<{ reject: false }>;
}

export async function domu(args: string[], opts: DomuOptions = {}): Promise<CliResult> {
  const r = await startDomu(args, opts);
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** The JSON summary `--json` prints (the real types, loosely: outputs are whatever a stage reports). */
export type { Summary } from '../../src/cli/summary.js';
export type { StageRecord } from '../../src/pipeline/run.js';
import type { Summary } from '../../src/cli/summary.js';
import type { StageRecord } from '../../src/pipeline/run.js';

/** `domu <args>` with --json among them: the result and its parsed summary. */
export async function domuJson(args: string[], opts: DomuOptions = {}): Promise<{ r: CliResult; s: Summary & { log: string } }> {
  const r = await domu(args, opts);
  try {
    return { r, s: JSON.parse(r.stdout) as Summary & { log: string } };
  } catch {
    throw new Error(`no JSON summary on stdout (exit ${r.exitCode}):\n${r.stdout}\n${r.stderr}`);
  }
}

export function stage(s: Summary, name: string): StageRecord {
  const st = s.stages.find((x) => x.name === name);
  if (!st) throw new Error(`no ${name} stage in the summary: ${JSON.stringify(s.stages.map((x) => x.name))}`);
  return st;
}
