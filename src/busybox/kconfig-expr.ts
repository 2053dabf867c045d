// The Kconfig expression language (`depends on`, `select … if`): parsed, printed, evaluated
// against a `.config` (tristate: n 0, m 1, y 2), and blamed: which symbols make an expression
// come out as it does, for the reason a fragment's wish did not survive oldconfig.
import { describe, escapeString, NUMBER_RE, type KConfig } from './kconfig.js';

export type KExpr =
  | { op: 'sym'; name: string }
  /** y, m, n, a number, or a quoted string (`quoted`). */
  | { op: 'const'; value: string; quoted?: boolean }
  | { op: 'not'; e: KExpr }
  | { op: 'and' | 'or'; a: KExpr; b: KExpr }
  | { op: 'cmp'; cmp: '=' | '!=' | '<' | '<=' | '>' | '>='; a: KExpr; b: KExpr }
  /** Text this scanner could not parse: never blamed, counts as met. */
  | { op: 'raw'; text: string; refs: string[] };

type Tok = { t: 'op'; v: string } | { t: 'word'; v: string } | { t: 'str'; v: string };

function tokenize(src: string): Tok[] | undefined {
  const toks: Tok[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    if (c === ' ' || c === '\t') {
      i++;
      continue;
    }
    const two = src.slice(i, i + 2);
    if (two === '&&' || two === '||' || two === '!=' || two === '<=' || two === '>=') {
      toks.push({ t: 'op', v: two });
      i += 2;
    } else if ('()!=<>'.includes(c)) {
      toks.push({ t: 'op', v: c });
      i++;
    } else if (c === '"' || c === "'") {
      let s = '';
      i++;
      while (i < src.length && src[i] !== c) {
        if (src[i] === '\\') i++;
        s += src[i] ?? '';
        i++;
      }
      if (i >= src.length) return undefined;
      i++;
      toks.push({ t: 'str', v: s });
    } else {
      const m = /^[^\s()!=<>&|"']+/.exec(src.slice(i));
      if (!m) return undefined;
      toks.push({ t: 'word', v: m[0] });
      i += m[0].length;
    }
  }
  return toks;
}

/** Parse a kconfig expression; what cannot be parsed is kept as a 'raw' node. */
export function parseExpr(src: string): KExpr {
  const text = src.trim();
  const toks = tokenize(text);
  const raw = (): KExpr => ({ op: 'raw', text, refs: [...new Set(text.match(/\b[A-Z][A-Z0-9_]*\b/g) ?? [])] });
  if (!toks || toks.length === 0) return raw();
  let p = 0;
  const peek = (): Tok | undefined => toks[p];
  const isOp = (v: string) => peek()?.t === 'op' && peek()!.v === v;
  const atomOf = (tok: Tok): KExpr => {
    if (tok.t === 'str') return { op: 'const', value: tok.v, quoted: true };
    if (tok.v === 'y' || tok.v === 'm' || tok.v === 'n' || /^-?[0-9]/.test(tok.v)) return { op: 'const', value: tok.v };
    return { op: 'sym', name: tok.v };
  };
  const primary = (): KExpr | undefined => {
    const tok = peek();
    if (!tok) return undefined;
    if (tok.t === 'op') {
      if (tok.v === '!') {
        p++;
        const e = primary();
        return e && { op: 'not', e };
      }
      if (tok.v === '(') {
        p++;
        const e = orExpr();
        if (!e || !isOp(')')) return undefined;
        p++;
        return e;
      }
      return undefined;
    }
    p++;
    const a = atomOf(tok);
    const next = peek();
    if (next?.t === 'op' && ['=', '!=', '<', '<=', '>', '>='].includes(next.v)) {
      p++;
      const rhs = peek();
      if (!rhs || rhs.t === 'op') return undefined;
      p++;
      return { op: 'cmp', cmp: next.v as '=', a, b: atomOf(rhs) };
    }
    return a;
  };
  const andExpr = (): KExpr | undefined => {
    let a = primary();
    while (a && isOp('&&')) {
      p++;
      const b = primary();
      a = b && { op: 'and', a, b };
    }
    return a;
  };
  const orExpr = (): KExpr | undefined => {
    let a = andExpr();
    while (a && isOp('||')) {
      p++;
      const b = andExpr();
      a = b && { op: 'or', a, b };
    }
    return a;
  };
  const e = orExpr();
  return e && p === toks.length ? e : raw();
}

const PREC: Record<KExpr['op'], number> = { or: 1, and: 2, not: 3, cmp: 4, sym: 5, const: 5, raw: 0 };

/** An expression as kconfig text, with only the parentheses it needs. */
export function formatExpr(e: KExpr): string {
  const sub = (c: KExpr, min: number) => (PREC[c.op] < min ? `(${formatExpr(c)})` : formatExpr(c));
  switch (e.op) {
    case 'sym':
      return e.name;
    case 'const':
      return e.quoted ? `"${escapeString(e.value)}"` : e.value;
    case 'not':
      return `!${sub(e.e, 5)}`;
    case 'and':
      return `${sub(e.a, 2)} && ${sub(e.b, 2)}`;
    case 'or':
      return `${sub(e.a, 1)} || ${sub(e.b, 1)}`;
    case 'cmp':
      return `${formatExpr(e.a)} ${e.cmp} ${formatExpr(e.b)}`;
    case 'raw':
      return e.text;
  }
}

/** Symbols an expression refers to. */
export function exprRefs(e: KExpr, into = new Set<string>()): Set<string> {
  switch (e.op) {
    case 'sym':
      into.add(e.name);
      break;
    case 'not':
      exprRefs(e.e, into);
      break;
    case 'and':
    case 'or':
    case 'cmp':
      exprRefs(e.a, into);
      exprRefs(e.b, into);
      break;
    case 'raw':
      for (const r of e.refs) into.add(r);
      break;
    case 'const':
      break;
  }
  return into;
}

const TRI = { n: 0, m: 1, y: 2 } as const;

function symText(k: KConfig, e: KExpr): string {
  if (e.op === 'const') return e.value;
  if (e.op !== 'sym') return '';
  const v = k.values.get(e.name);
  if (v === undefined) return 'n';
  return v.value;
}

/** Tristate value (0 n, 1 m, 2 y) of an expression against a configuration. */
export function evalExpr(e: KExpr, k: KConfig): number {
  switch (e.op) {
    case 'sym': {
      const v = k.values.get(e.name);
      return v?.kind === 'bool' ? TRI[v.value] : 0;
    }
    case 'const':
      return e.value === 'y' ? 2 : e.value === 'm' ? 1 : 0;
    case 'not':
      return 2 - evalExpr(e.e, k);
    case 'and':
      return Math.min(evalExpr(e.a, k), evalExpr(e.b, k));
    case 'or':
      return Math.max(evalExpr(e.a, k), evalExpr(e.b, k));
    case 'cmp': {
      const a = symText(k, e.a);
      const b = symText(k, e.b);
      let c: number;
      if (NUMBER_RE.test(a) && NUMBER_RE.test(b)) {
        const x = BigInt(a);
        const y = BigInt(b);
        c = x < y ? -1 : x > y ? 1 : 0;
      } else c = a < b ? -1 : a > b ? 1 : 0;
      const ok = { '=': c === 0, '!=': c !== 0, '<': c < 0, '<=': c <= 0, '>': c > 0, '>=': c >= 0 }[e.cmp];
      return ok ? 2 : 0;
    }
    case 'raw':
      return 2;
  }
}

type Blame = { name: string; state: 'off' | 'on' | 'value' };

/** The symbols that make `e` come out `truth` (true: y/m, false: n) in `k`. */
export function blame(e: KExpr, k: KConfig, truth: boolean, out: Blame[] = []): Blame[] {
  switch (e.op) {
    case 'sym':
      out.push({ name: e.name, state: truth ? 'on' : 'off' });
      break;
    case 'not':
      blame(e.e, k, !truth, out);
      break;
    case 'and':
    case 'or': {
      // A true `and` / false `or` needs both sides; otherwise only the sides that decide it.
      const both = (e.op === 'and') === truth;
      for (const side of [e.a, e.b]) if (both || evalExpr(side, k) > 0 === truth) blame(side, k, truth, out);
      break;
    }
    case 'cmp':
      for (const side of [e.a, e.b]) if (side.op === 'sym') out.push({ name: side.name, state: 'value' });
      break;
    case 'const':
    case 'raw':
      break;
  }
  return out;
}

export function listNames(names: string[]): string {
  return names.length <= 1 ? (names[0] ?? '') : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

export function formatBlame(list: Blame[], k: KConfig): string {
  const seen = new Set<string>();
  const uniq = list.filter((b) => !seen.has(b.name) && seen.add(b.name));
  const parts: string[] = [];
  const off = uniq.filter((b) => b.state === 'off').map((b) => b.name);
  const on = uniq.filter((b) => b.state === 'on').map((b) => b.name);
  if (off.length) parts.push(`${listNames(off)} ${off.length === 1 ? 'is' : 'are'} off`);
  if (on.length) parts.push(`${listNames(on)} ${on.length === 1 ? 'is' : 'are'} on`);
  for (const b of uniq.filter((x) => x.state === 'value')) parts.push(`${b.name} is ${describe(k.values.get(b.name))}`);
  return parts.join(', ');
}
