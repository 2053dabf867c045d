// The version check of a module against the guest kernel: the first word of `vermagic=` is the
// kernel release the module was built for, and a kernel refuses a module whose vermagic differs
// from its own ("Invalid module format"). Checked here, before anything reaches the guest.
// The reference lab's "modinfo shows no dependencies" check is the other half: depends= is what
// the closure follows, so a module with an empty depends= simply has a closure of one.
import { DomuError } from '../core/errors.js';
import type { ClosureModule } from './closure.js';

export interface VermagicVerdict {
  name: string;
  path: string;
  /** The module's vermagic release (first word of vermagic=). */
  release: string;
  verdict: 'ok' | 'mismatch (forced)';
}

/**
 * Check every module's vermagic release against `release`. A mismatch is an error showing both
 * releases, unless `force` (then a warning per module through `warn`).
 */
export function checkVermagic(modules: readonly ClosureModule[], release: string, opts: { force?: boolean; warn?: (line: string) => void } = {}): VermagicVerdict[] {
  const verdicts: VermagicVerdict[] = [];
  const bad: string[] = [];
  for (const m of modules) {
    const ok = m.info.release === release;
    if (!ok) {
      const what = m.info.release ? `built for ${m.info.release}` : 'has no vermagic';
      bad.push(`${m.name} (${m.file}) ${what}`);
      if (opts.force) opts.warn?.(`--force-vermagic: ${m.name} ${what}, the guest kernel is ${release}; the kernel will most likely refuse it`);
    }
    verdicts.push({ name: m.name, path: m.path, release: m.info.release, verdict: ok ? 'ok' : 'mismatch (forced)' });
  }
  if (bad.length && !opts.force) {
    throw new DomuError(`vermagic mismatch: the guest kernel is ${release}, but ${bad.join('; ')}`, {
      hint: `use modules built for ${release} (the kernel's own modules directory or its linux-headers), or --force-vermagic to copy them anyway`,
    });
  }
  return verdicts;
}
