// The programs the pipeline needs, from the single package list scripts/debian-packages.txt
// (the same list scripts/setup.sh installs from).
import { readFileSync } from 'node:fs';
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
