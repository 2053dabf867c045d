// Once per test run, before any test file: when the run began (for fixtures resolved per run),
// the compiled CLI (build/) must be the code in src/, and the shared fixtures are made.
// Tests run `domu` as users do, through bin/domu.js and build/ (test/helpers/cli.ts): a fresh
// process per run, without compiling TypeScript each time (tsx cost about 0.6 s per process,
// and the suite starts several hundred). `make test` has just built it; a run of vitest alone
// after an edit builds it here.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import type { TestProject } from 'vitest/node';
import { TEST_CACHE_DIR } from './busybox-tarball.js';
import { PROJECT_ROOT } from '../../src/core/paths.js';

const newestMtime = (dir: string): number =>
  readdirSync(dir, { withFileTypes: true }).reduce((m, e) => Math.max(m, e.isDirectory() ? newestMtime(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs), 0);

declare module 'vitest' {
  export interface ProvidedContext {
    /** When this test run began (ms since the epoch): shared test fixtures older than that are re-resolved. */
    testRunStart: number;
  }
}

/** Whether the run names test files and all of them are unit tests (which need no fixtures). */
function unitOnly(): boolean {
  const files = process.argv.slice(2).filter((a) => !a.startsWith('-') && a !== 'run' && a !== 'vitest');
  return files.length > 0 && files.every((f) => /(^|\/)test\/unit(\/|$)/.test(f));
}

export default function setup({ provide }: TestProject): void {
  provide('testRunStart', Date.now());
  const main = join(PROJECT_ROOT, 'build', 'cli', 'main.js');
  const stale = !existsSync(main) || newestMtime(join(PROJECT_ROOT, 'src')) > statSync(main).mtimeMs;
  if (stale) {
    process.stderr.write('global setup: src/ is newer than build/; compiling the CLI (npm run build)\n');
    execFileSync(process.execPath, [join(PROJECT_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: PROJECT_ROOT, stdio: 'inherit' });
  }
  if (unitOnly()) return;
  // What many files start with, made once before they start (a lookup when the cache has it):
  // otherwise the first two files, in two workers, each compile busybox and download the kernel.
  // A test that then finds it missing makes it itself, so a failure here only costs time.
  process.stderr.write(`global setup: shared fixtures in ${TEST_CACHE_DIR} (the busybox 1.35.0 tarball and static build, Debian's kernel)\n`);
  try {
    execFileSync(process.execPath, ['--import', 'tsx', join(PROJECT_ROOT, 'test', 'helpers', 'prepare-fixtures.ts')], { cwd: PROJECT_ROOT, stdio: 'inherit', env: { ...process.env, DOMU_TEST_CACHE: TEST_CACHE_DIR } });
  } catch {
    process.stderr.write('global setup: the shared fixtures could not be prepared (above); each test file makes what it needs\n');
  }
}
