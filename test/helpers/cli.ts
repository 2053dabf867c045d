// Run the real `domu` CLI (from src/, through tsx) as a child process.
import { execa, type ResultPromise } from 'execa';
import { PROJECT_ROOT } from '../../src/lib/paths.js';

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export function startDomu(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): ResultPromise<{ reject: false }> {
  return execa(process.execPath, ['--import', 'tsx', `${PROJECT_ROOT}/src/cli/main.ts`, ...args], {
    cwd: opts.cwd ?? PROJECT_ROOT,
    env: { ...opts.env, NODE_OPTIONS: '' },
    reject: false,
    stdin: 'ignore',
  }) as ResultPromise<{ reject: false }>;
}

export async function domu(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<CliResult> {
  const r = await startDomu(args, opts);
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}
