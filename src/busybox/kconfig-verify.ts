// After `make oldconfig`: did what a fragment asked for survive, and if not, why (from the
// Kconfig sources when they were read).
import { describe, isOn, PREFIX, satisfies, type KConfig, type KValue } from './kconfig.js';
import { blame, evalExpr, formatBlame, listNames } from './kconfig-expr.js';
import type { KconfigDeps } from './kconfig-sources.js';

export interface Mismatch {
  /** Bare symbol name. */
  symbol: string;
  /** What the fragment asked for (describe()). */
  wanted: string;
  /** What the final `.config` has (describe()), or 'absent'. */
  final: string;
  /** Why, as far as the Kconfig sources tell (see verifyFragment). */
  reason: string;
  /** The same reason, as a category. */
  cause: 'depends' | 'no-such-symbol' | 'select' | 'choice' | 'unknown';
}

/**
 * Compare every symbol the fragment sets with the final `.config` (after oldconfig). Without
 * `deps` the reason is a guess; with them (scanKconfigDeps of the same tree):
 *  - the symbol is not defined: `no such symbol in this busybox release`;
 *  - its dependencies are not met: `depends on <expr>, and <symbols> is/are off`;
 *  - something that is on selects it: `selected by X`;
 *  - it is in a choice: `in a choice with ..., and X is the one set`;
 *  - otherwise `oldconfig changed it (a select or a choice?)`.
 */
export function verifyFragment(final: KConfig, fragment: KConfig, deps?: KconfigDeps): Mismatch[] {
  const out: Mismatch[] = [];
  for (const line of fragment.lines) {
    if (line.kind !== 'symbol') continue;
    const symbol = line.symbol;
    const wanted = fragment.values.get(symbol);
    if (wanted === undefined) continue;
    const got = final.values.get(symbol);
    if (satisfies(wanted, got)) continue;
    const { reason, cause } = explain(symbol, wanted, got, final, deps);
    out.push({ symbol, wanted: describe(wanted), final: describe(got), reason, cause });
  }
  return out;
}

function explain(symbol: string, wanted: KValue, got: KValue | undefined, final: KConfig, deps: KconfigDeps | undefined): Pick<Mismatch, 'reason' | 'cause'> {
  const fallback = { reason: 'oldconfig changed it (a select or a choice?)', cause: 'unknown' as const };
  if (!deps) {
    if (got === undefined) return { reason: 'not in the final .config (no such symbol, or its dependencies are off)', cause: 'unknown' };
    return fallback;
  }
  const sym = deps.symbols.get(symbol);
  if (!sym) return { reason: 'no such symbol in this busybox release', cause: 'no-such-symbol' };
  const wantedOn = wanted.kind !== 'bool' || wanted.value !== 'n';
  if (wantedOn && sym.depends) {
    const level = evalExpr(sym.depends, final);
    if (level === 0) {
      const why = formatBlame(blame(sym.depends, final, false), final);
      return { reason: `depends on ${sym.dependsText}${why ? `, and ${why}` : ''}`, cause: 'depends' };
    }
    if (level === 1 && wanted.kind === 'bool' && wanted.value === 'y') {
      return { reason: `depends on ${sym.dependsText}, which is m (limits it to m)`, cause: 'depends' };
    }
  }
  if (!wantedOn || (wanted.kind === 'bool' && wanted.value === 'm')) {
    const by = sym.selectedBy.filter((s) => isOn(final.values.get(s.symbol)) && (s.cond === undefined || evalExpr(s.cond, final) > 0)).map((s) => s.symbol);
    if (by.length) return { reason: `selected by ${listNames([...new Set(by)])}`, cause: 'select' };
  }
  if (sym.choice && sym.choice.length > 1) {
    const others = sym.choice.filter((m) => m !== symbol);
    const chosen = sym.choice.filter((m) => final.values.get(m)?.kind === 'bool' && final.values.get(m)?.value === 'y');
    const which = chosen.length ? `, and ${listNames(chosen)} ${chosen.length === 1 ? 'is' : 'are'} the one set` : '';
    return { reason: `in a choice with ${listNames(others)}${which}`, cause: 'choice' };
  }
  return fallback;
}

/** One line per mismatch: `CONFIG_X: wanted y, got not set — <reason>`. */
export function formatMismatches(m: Mismatch[]): string {
  return m.map((x) => `${PREFIX}${x.symbol}: wanted ${x.wanted}, got ${x.final} — ${x.reason}`).join('\n');
}
