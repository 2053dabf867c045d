// The programs the pipeline needs, from the single package list scripts/debian-packages.txt
// (the same list scripts/setup.sh installs from).
import { readFileSync } from 'node:fs';
import { ExecError, run } from './exec.js';
import { memoryLogger } from './log.js';
import { projectPath } from './paths.js';

export interface Prerequisite {
  package: string;
  /** Program to look for on PATH, or undefined for library/data packages. */
  program: string | undefined;
  why: string;
}

export const PACKAGE_LIST = projectPath('scripts', 'debian-packages.txt');

export function parsePackageList(text: string): Prerequisite[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const [pkg, program, ...why] = l.split(/\s+/);
      return { package: pkg!, program: program && program !== '-' ? program : undefined, why: why.join(' ') };
    });
}

export function prerequisites(): Prerequisite[] {
  return parsePackageList(readFileSync(PACKAGE_LIST, 'utf8'));
}

/** How to ask each program for its version (first matching line is shown). */
export const VERSION_ARGS: Record<string, string[]> = {
  mke2fs: ['-V'],
  debugfs: ['-V'],
  e2fsck: ['-V'],
  dumpe2fs: ['-V'],
  filefrag: ['-V'],
  bzip2: ['--help'],
  'apt-get': ['--version'],
};

/**
 * The version `program` (at `path`, default found on PATH) reports, e.g. "1.47.0"; null when it
 * reports none. Used by `domu doctor` and for the tool versions a build records.
 */
export async function programVersion(path: string, program: string = path): Promise<string | null> {
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
