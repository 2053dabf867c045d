// Once per test run, before any test file: when the run began (for fixtures resolved per run),
// and the compiled CLI (build/) must be the code in src/.
// Tests run `domu` as users do, through bin/domu.js and build/ (test/helpers/cli.ts): a fresh
// process per run, without compiling TypeScript each time (tsx cost about 0.6 s per process,
// and the suite starts several hundred). `make test` has just built it; a run of vitest alone
// after an edit builds it here.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import type { TestProject } from 'vitest/node';
import { PROJECT_ROOT } from '../../src/core/paths.js';

const newestMtime = (dir: string): number =>
  readdirSync(dir, { withFileTypes: true }).reduce((m, e) => Math.max(m, e.isDirectory() ? newestMtime(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs), 0);

declare module 'vitest' {
  export interface ProvidedContext {
    /** When this test run began (ms since the epoch): shared test fixtures older than that are re-resolved. */
    testRunStart: number;
  }
}

export default function setup({ provide }: TestProject): void {
  provide('testRunStart', Date.now());
  const main = join(PROJECT_ROOT, 'build', 'cli', 'main.js');
  const stale = !existsSync(main) || newestMtime(join(PROJECT_ROOT, 'src')) > statSync(main).mtimeMs;
  if (!stale) return;
  process.stderr.write('global setup: src/ is newer than build/; compiling the CLI (npm run build)\n');
  execFileSync(process.execPath, [join(PROJECT_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: PROJECT_ROOT, stdio: 'inherit' });
}
