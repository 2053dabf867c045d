// Writes docs/reliability.md from the fault suite's own results (see reliability.ts). Only a run
// that included every test/faults/*.test.ts file rewrites the document; a partial run (one file,
// a -t filter) writes build/reliability.partial.md instead, so the committed table is always whole.
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import type { Reporter, TestModule } from 'vitest/node';
import { renderReliability, type ReliabilityResult } from '../../scripts/reliability-doc.js';
import type { ReliabilityRow } from './reliability.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const FAULTS = join(ROOT, 'test', 'faults');

export default class ReliabilityReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    const results: ReliabilityResult[] = [];
    const ran = new Set<string>();
    let partial = false;
    for (const m of modules) {
      const file = relative(ROOT, m.moduleId);
      if (!file.startsWith('test/faults/')) continue;
      ran.add(file);
      for (const t of m.children.allTests()) {
        const row = t.meta().reliability as ReliabilityRow | undefined;
        const state = t.result().state;
        if (state === 'skipped' || state === 'pending') partial = true;
        if (!row) continue;
        const r = t.result();
        results.push({
          ...row,
          file,
          test: t.fullName,
          result: state === 'passed' ? 'pass' : state === 'failed' ? 'FAIL' : `not run (${state}${'note' in r && r.note ? `: ${r.note}` : ''})`,
        });
      }
    }
    if (ran.size === 0) return;
    const all = readdirSync(FAULTS).filter((f) => f.endsWith('.test.ts')).map((f) => `test/faults/${f}`);
    const whole = all.every((f) => ran.has(f)) && !partial;
    const target = whole ? join(ROOT, 'docs', 'reliability.md') : join(ROOT, 'build', 'reliability.partial.md');
    mkdirSync(join(target, '..'), { recursive: true });
    writeFileSync(target, renderReliability(results, { whole }));
    process.stdout.write(`reliability: ${results.length} cases → ${relative(ROOT, target)}\n`);
  }
}
