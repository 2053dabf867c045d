// Kconfig `.config` handling for busybox (and Linux-style) builds: parse, merge a fragment,
// serialize, and check after `make oldconfig` that what a fragment asked for survived, with a
// reason taken from the Kconfig sources when it did not.
//
// Naming convention: symbols are always BARE names, without the `CONFIG_` prefix (`STATIC`, not
// `CONFIG_STATIC`), as they are written in the Kconfig sources. Only the `.config` text and the
// messages meant for the user carry the prefix. `get`/`set` refuse a name that starts with
// `CONFIG_`, so that the mistake cannot pass silently.
//
// `.config` syntax (as kconfig writes it):
//   CONFIG_X=y | CONFIG_X=m          bool/tristate (CONFIG_X=n is read as "not set")
//   # CONFIG_X is not set            bool/tristate n
//   CONFIG_X="text"                  string; inside the quotes `\"` and `\\` are escapes
//   CONFIG_X=123 | CONFIG_X=0x1f     int/hex, kept as text
// Anything after a value is an error (kconfig has no trailing comments: `CONFIG_X=y # why` is
// invalid); `#` inside a quoted string is part of the string.
import type { Dirent } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join, posix, resolve } from 'node:path';
import { DomuError, InputError } from '../core/errors.js';

// ---------------------------------------------------------------------------------------------
// Values and the parsed file

export type KValue = { kind: 'bool'; value: 'y' | 'm' | 'n' } | { kind: 'string'; value: string } | { kind: 'number'; value: string };

export type KLine =
  /** A comment or blank line, kept verbatim. */
  | { kind: 'text'; text: string }
  /**
   * The one line of a symbol; its value is `values.get(symbol)`. `raw`/`rawValue` keep the line
   * as it was read so that an unchanged value is written back byte for byte.
   */
  | { kind: 'symbol'; symbol: string; raw?: string; rawValue?: KValue };

export interface KConfig {
  /** Where the text came from (file name), for messages. */
  label: string;
  /** Lines in order; each symbol has exactly one line. */
  lines: KLine[];
  /** Bare symbol name (no `CONFIG_`) → value. */
  values: Map<string, KValue>;
  /** Symbols assigned more than once in the text (the last assignment won, at its position). */
  duplicates: string[];
  /** Whether the text ended with a newline (kept by serializeConfig). */
  trailingNewline: boolean;
}

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

const PREFIX = 'CONFIG_';
const NAME_RE = /^[A-Za-z0-9_]+$/;
const ASSIGN_RE = /^CONFIG_([A-Za-z0-9_]+)=(.*)$/;
const NOT_SET_RE = /^#\s*CONFIG_([A-Za-z0-9_]+) is not set$/;
const NUMBER_RE = /^(?:-?[0-9]+|0[xX][0-9a-fA-F]+)$/;

/** An empty configuration (for building one with set()). */
export function emptyConfig(label = '(new)'): KConfig {
  return { label, lines: [], values: new Map(), duplicates: [], trailingNewline: true };
}

/**
 * A complete `.config` (written by kconfig). A malformed line is a DomuError (the file is the
 * build's, not the user's) naming `label:line`.
 */
export function parseConfig(text: string, label: string): KConfig {
  return parseText(text, label, (m) => new DomuError(m), 'config');
}

/**
 * A config fragment given by the user: the same syntax; a malformed line is an InputError naming
 * `label:line`. A symbol assigned twice: the last assignment wins; it is listed in `duplicates`
 * for the caller to warn about.
 */
export function parseFragment(text: string, label: string): KConfig {
  return parseText(text, label, (m) => new InputError(m, 'fragment lines are `CONFIG_X=value`, `# CONFIG_X is not set`, comments or blank'), 'fragment');
}

// ---------------------------------------------------------------------------------------------
// What a value may carry into make and the shell
//
// busybox's Makefile includes `.config` as make syntax on every build target, and even `make
// oldconfig` does (its `.kernelrelease` step): a `$` in any value is expanded by make, so
// `CONFIG_EXTRA_CFLAGS="$(shell touch /tmp/x)"` runs a command, quotes or not. The values of a few
// symbols are then pasted, unquoted, into command lines that the shell runs (the compiler and
// linker lines, `CROSS_COMPILE` read with grep before anything else), so there a `;`, `|`, `&`,
// redirection, parenthesis or single quote would start a command of its own.

/** String symbols whose text busybox's make puts into shell command lines unquoted. */
const COMMAND_LINE_SYMBOLS = new Set(['EXTRA_CFLAGS', 'EXTRA_LDFLAGS', 'EXTRA_LDLIBS', 'CROSS_COMPILER_PREFIX', 'SYSROOT', 'PREFIX']);
const MAKE_EXPANDS = /[$`]/;
const SHELL_SPECIAL = /[;&|<>()'\x00-\x1f\x7f]/;

/** Why a string value cannot be handed to busybox's make (and what to do), or undefined when it can. */
function makeUnsafe(symbol: string, value: KValue): { why: string; hint: string } | undefined {
  if (value.kind !== 'string') return undefined;
  const m = MAKE_EXPANDS.exec(value.value);
  if (m) {
    return {
      why: `${JSON.stringify(value.value)} contains ${m[0] === '$' ? 'a $' : 'a backquote'}: busybox's Makefile reads .config, so make would expand $(…) and the shell would run \`…\`; refusing it`,
      hint: 'write the value itself: a kconfig value needs no $ and no backquotes',
    };
  }
  if (COMMAND_LINE_SYMBOLS.has(symbol)) {
    const s = SHELL_SPECIAL.exec(value.value);
    if (s) {
      const what = /[\x00-\x1f\x7f]/.test(s[0]) ? 'a control character' : JSON.stringify(s[0]);
      return {
        why: `${JSON.stringify(value.value)} contains ${what}: make puts CONFIG_${symbol} unquoted into shell command lines, where it would start another command; refusing it`,
        hint: `write CONFIG_${symbol} as plain flags and paths, without ; & | < > ( ) ' or control characters`,
      };
    }
  }
  return undefined;
}

/** Symbols a fragment may not set: domu passes their meaning to make itself. */
function fragmentOnly(symbol: string, value: KValue): { why: string; hint: string } | undefined {
  if (symbol === 'PREFIX') {
    return { why: 'domu installs busybox into its own staging directory (make install CONFIG_PREFIX=…); a fragment cannot choose where', hint: 'drop the CONFIG_PREFIX line' };
  }
  if (symbol === 'CROSS_COMPILER_PREFIX' && !(value.kind === 'string' && value.value === '')) {
    return { why: 'the cross compiler is chosen with busybox.cross_compile in the build description (domu passes CROSS_COMPILE to make)', hint: 'drop the line and set busybox.cross_compile' };
  }
  return undefined;
}

function parseText(text: string, label: string, fail: (msg: string) => Error, kind: 'fragment' | 'config'): KConfig {
  const k = emptyConfig(label);
  if (text === '') return k;
  const rawLines = text.split('\n');
  k.trailingNewline = rawLines[rawLines.length - 1] === '';
  if (k.trailingNewline) rawLines.pop();
  const at = new Map<string, number>(); // symbol → index in k.lines
  rawLines.forEach((raw, i) => {
    const where = `${label}:${i + 1}`;
    const line = raw.trim();
    let symbol: string;
    let value: KValue;
    const notSet = NOT_SET_RE.exec(line);
    if (notSet) {
      symbol = notSet[1]!;
      value = { kind: 'bool', value: 'n' };
    } else if (line === '' || line.startsWith('#')) {
      k.lines.push({ kind: 'text', text: raw });
      return;
    } else {
      const m = ASSIGN_RE.exec(line);
      if (!m) {
        const hint = /^[A-Za-z0-9_]+=/.test(line) ? ' (symbols are written with their CONFIG_ prefix)' : '';
        throw fail(`${where}: not a kconfig line: ${quoteLine(line)}${hint}; expected CONFIG_X=value, # CONFIG_X is not set, or a comment`);
      }
      symbol = m[1]!;
      const v = parseValue(m[2]!.trim());
      if (typeof v === 'string') throw fail(`${where}: CONFIG_${symbol}: ${v}`);
      value = v;
      const unsafe = makeUnsafe(symbol, value);
      if (unsafe) {
        const msg = `${where}: CONFIG_${symbol}: ${unsafe.why}`;
        throw kind === 'fragment' ? new InputError(msg, unsafe.hint) : fail(msg);
      }
      const own = kind === 'fragment' ? fragmentOnly(symbol, value) : undefined;
      if (own) throw new InputError(`${where}: CONFIG_${symbol}: ${own.why}`, own.hint);
    }
    const prev = at.get(symbol);
    if (prev !== undefined) {
      k.duplicates.push(symbol);
      k.lines.splice(prev, 1);
      for (const [s, idx] of at) if (idx > prev) at.set(s, idx - 1);
    }
    at.set(symbol, k.lines.length);
    k.lines.push({ kind: 'symbol', symbol, raw, rawValue: value });
    k.values.set(symbol, value);
  });
  k.duplicates = [...new Set(k.duplicates)];
  return k;
}

function quoteLine(line: string): string {
  return JSON.stringify(line.length > 80 ? `${line.slice(0, 77)}...` : line);
}

/** The value part of `CONFIG_X=<text>`, or an error message. */
function parseValue(text: string): KValue | string {
  if (text === 'y' || text === 'm' || text === 'n') return { kind: 'bool', value: text };
  if (text === '') return 'empty value (write `# CONFIG_X is not set` for n, "" for an empty string)';
  if (text.startsWith('"')) {
    let out = '';
    for (let i = 1; i < text.length; i++) {
      const c = text[i]!;
      if (c === '\\') {
        i++;
        if (i >= text.length) break;
        out += text[i];
      } else if (c === '"') {
        const rest = text.slice(i + 1).trim();
        if (rest !== '') return `text after the closing quote: ${JSON.stringify(rest)} (kconfig allows no comment after a value)`;
        return { kind: 'string', value: out };
      } else {
        out += c;
      }
    }
    return 'unterminated string (missing closing ")';
  }
  if (NUMBER_RE.test(text)) return { kind: 'number', value: text };
  const head = text.split(/\s+/)[0]!;
  if (head !== text && (head === 'y' || head === 'm' || head === 'n' || NUMBER_RE.test(head))) {
    return `text after the value: ${JSON.stringify(text)} (kconfig allows no comment after a value)`;
  }
  return `invalid value ${JSON.stringify(text)} (expected y, m, n, a "quoted string" or a number)`;
}

// ---------------------------------------------------------------------------------------------
// Writing

function escapeString(s: string): string {
  return s.replace(/[\\"]/g, (c) => `\\${c}`);
}

/** One `.config` line for a symbol, exactly as kconfig writes it. */
export function formatAssignment(symbol: string, value: KValue): string {
  switch (value.kind) {
    case 'bool':
      return value.value === 'n' ? `# ${PREFIX}${symbol} is not set` : `${PREFIX}${symbol}=${value.value}`;
    case 'string':
      return `${PREFIX}${symbol}="${escapeString(value.value)}"`;
    case 'number':
      return `${PREFIX}${symbol}=${value.value}`;
  }
}

export function serializeConfig(k: KConfig): string {
  const out: string[] = [];
  for (const line of k.lines) {
    if (line.kind === 'text') {
      out.push(line.text);
      continue;
    }
    const value = k.values.get(line.symbol);
    if (value === undefined) continue; // removed through the map
    out.push(line.raw !== undefined && line.rawValue !== undefined && sameValue(line.rawValue, value) ? line.raw : formatAssignment(line.symbol, value));
  }
  if (out.length === 0) return '';
  return out.join('\n') + (k.trailingNewline ? '\n' : '');
}

// ---------------------------------------------------------------------------------------------
// Small helpers

function checkName(symbol: string): void {
  if (symbol.startsWith(PREFIX)) throw new DomuError(`kconfig symbol ${symbol}: use the bare name ${symbol.slice(PREFIX.length)} (without CONFIG_)`);
  if (!NAME_RE.test(symbol)) throw new DomuError(`not a kconfig symbol name: ${JSON.stringify(symbol)}`);
}

function checkValue(symbol: string, value: KValue): void {
  if (value.kind === 'bool' && !['y', 'm', 'n'].includes(value.value)) throw new DomuError(`CONFIG_${symbol}: bool value must be y, m or n`);
  if (value.kind === 'number' && !NUMBER_RE.test(value.value)) throw new DomuError(`CONFIG_${symbol}: not a kconfig number: ${JSON.stringify(value.value)}`);
  if (value.kind === 'string' && /[\n\r]/.test(value.value)) throw new DomuError(`CONFIG_${symbol}: a kconfig string cannot contain a line break`);
  const unsafe = makeUnsafe(symbol, value);
  if (unsafe) throw new DomuError(`CONFIG_${symbol}: ${unsafe.why}`, { hint: unsafe.hint });
}

/** The value of a bare symbol name, undefined when the config does not mention it. */
export function get(k: KConfig, symbol: string): KValue | undefined {
  checkName(symbol);
  return k.values.get(symbol);
}

/** Set a symbol in place: its line keeps its position, a new symbol is appended. */
export function set(k: KConfig, symbol: string, value: KValue): void {
  checkName(symbol);
  checkValue(symbol, value);
  if (!k.lines.some((l) => l.kind === 'symbol' && l.symbol === symbol)) k.lines.push({ kind: 'symbol', symbol });
  k.values.set(symbol, { ...value } as KValue);
}

/** Whether a value counts as on (y or m). */
export function isOn(value: KValue | undefined): boolean {
  return value?.kind === 'bool' && value.value !== 'n';
}

/** A value as text for messages: `y`, `m`, `not set`, `"quoted"`, `123`; undefined → `absent`. */
export function describe(value: KValue | undefined): string {
  if (value === undefined) return 'absent';
  switch (value.kind) {
    case 'bool':
      return value.value === 'n' ? 'not set' : value.value;
    case 'string':
      return `"${escapeString(value.value)}"`;
    case 'number':
      return value.value;
  }
}

function sameValue(a: KValue, b: KValue): boolean {
  if (a.kind !== b.kind) return false;
  if (a.kind === 'number') {
    try {
      return BigInt(a.value) === BigInt(b.value);
    } catch {
      return a.value === b.value;
    }
  }
  return a.value === b.value;
}

/** Whether the final value satisfies what was wanted; absent counts as n for a wanted n. */
function satisfies(wanted: KValue, final: KValue | undefined): boolean {
  if (final === undefined) return wanted.kind === 'bool' && wanted.value === 'n';
  return sameValue(wanted, final);
}

// ---------------------------------------------------------------------------------------------
// Merging

/**
 * `base` with the fragment's symbols applied: an existing symbol's line (assignment or not-set)
 * is replaced in place, a new one appended at the end; everything else keeps its order. The
 * fragment's comments are not copied. `base` is not modified.
 */
export function mergeFragment(base: KConfig, fragment: KConfig): KConfig {
  const out: KConfig = {
    label: base.label,
    lines: base.lines.map((l) => ({ ...l })),
    values: new Map(base.values),
    duplicates: [...base.duplicates],
    trailingNewline: base.trailingNewline,
  };
  for (const line of fragment.lines) {
    if (line.kind !== 'symbol') continue;
    const value = fragment.values.get(line.symbol);
    if (value !== undefined) set(out, line.symbol, value);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Kconfig expressions

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
function blame(e: KExpr, k: KConfig, truth: boolean, out: Blame[] = []): Blame[] {
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

function listNames(names: string[]): string {
  return names.length <= 1 ? (names[0] ?? '') : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

function formatBlame(list: Blame[], k: KConfig): string {
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

// ---------------------------------------------------------------------------------------------
// Kconfig sources: dependencies

export interface KconfigSymbol {
  name: string;
  /** bool, tristate, string, int, hex (undefined when no definition gave one). */
  type: string | undefined;
  /**
   * Combined dependency: enclosing `if` blocks, `menu`/`choice` `depends on`, and the entry's own
   * `depends on` lines, ANDed (ORed over several definitions); undefined when there is none.
   */
  depends: KExpr | undefined;
  /** formatExpr(depends), or undefined. */
  dependsText: string | undefined;
  /** Symbols referenced by `depends`. */
  refs: Set<string>;
  /** Symbols whose `select` forces this one on, with the select's `if` condition. */
  selectedBy: { symbol: string; cond: KExpr | undefined }[];
  /** Members of the choice this symbol belongs to (itself included), undefined outside a choice. */
  choice: string[] | undefined;
  /** Where it is defined (`path:line`, relative to the tree; for a Config.in generated from
   *  Config.src, the Config.src or .c file the line comes from). */
  defined: string[];
}

export interface KconfigDeps {
  symbols: Map<string, KconfigSymbol>;
  /** Kconfig files read (relative paths; generated ones as `dir/Config.in`). */
  files: string[];
}

interface SrcLine {
  text: string;
  where: string;
}

interface Frame {
  kind: 'if' | 'menu' | 'choice';
  deps: KExpr[];
  members?: string[];
}

interface Def {
  name: string;
  type: string | undefined;
  frames: Frame[];
  own: KExpr[];
  where: string;
}

const CONFIG_FILE = 'Config.in';
const CONFIG_SRC = 'Config.src';

/**
 * Read the Kconfig sources of an (extracted) busybox tree: walk it for `Config.in` files (and
 * `Config.src` where busybox has not generated the `Config.in` yet — then the `//config:` lines of
 * the directory's `*.c` files are put at its INSERT line, as scripts/gen_build_files.sh does),
 * follow `source` from the top Config.in so that `if`/`menu`/`choice` context crosses files, and
 * read files no `source` reached on their own.
 * Approximate: prompts' `if`, `visible if`, `imply`, defaults and ranges are not modelled.
 */
export async function scanKconfigDeps(treeDir: string): Promise<KconfigDeps> {
  const root = resolve(treeDir);
  const dirs = new Map<string, { files: Set<string> }>(); // relative dir ('' = top) → plain files
  await walk(root, '', dirs);

  const defs: Def[] = [];
  const selects: { target: string; by: string; cond: KExpr | undefined }[] = [];
  const files: string[] = [];
  const done = new Set<string>(); // relative dirs whose Config.in/src has been read
  const choices: string[][] = [];

  const load = async (relDir: string): Promise<SrcLine[] | undefined> => {
    const entry = dirs.get(relDir);
    if (!entry) return undefined;
    const inPath = relDir ? `${relDir}/${CONFIG_FILE}` : CONFIG_FILE;
    if (entry.files.has(CONFIG_FILE)) {
      const text = await readFile(join(root, inPath), 'utf8');
      files.push(inPath);
      return text.split('\n').map((t, i) => ({ text: t, where: `${inPath}:${i + 1}` }));
    }
    if (!entry.files.has(CONFIG_SRC)) return undefined;
    const srcPath = relDir ? `${relDir}/${CONFIG_SRC}` : CONFIG_SRC;
    const cFiles = [...entry.files].filter((f) => f.endsWith('.c')).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const [src, ...cTexts] = await Promise.all([readFile(join(root, srcPath), 'utf8'), ...cFiles.map((f) => readFile(join(root, relDir, f), 'latin1'))]);
    const inserted: SrcLine[] = [];
    cTexts.forEach((text, n) => {
      if (!text.includes('//config:')) return;
      const cPath = relDir ? `${relDir}/${cFiles[n]!}` : cFiles[n]!;
      text.split('\n').forEach((t, i) => {
        if (t.startsWith('//config:')) inserted.push({ text: t.slice('//config:'.length), where: `${cPath}:${i + 1}` });
      });
    });
    const out: SrcLine[] = [];
    src.split('\n').forEach((t, i) => {
      if (t === 'INSERT') out.push(...inserted);
      else out.push({ text: t, where: `${srcPath}:${i + 1}` });
    });
    files.push(`${inPath} (from ${CONFIG_SRC})`);
    return out;
  };

  const process = async (lines: SrcLine[], stack: Frame[], depth: number): Promise<void> => {
    type Current = { kind: 'def'; def: Def } | { kind: 'frame'; frame: Frame } | undefined;
    let current: Current;
    let help: { indent: number | undefined } | undefined;
    for (let i = 0; i < lines.length; i++) {
      const first = lines[i]!;
      if (help) {
        if (first.text.trim() === '') continue;
        const ind = indentOf(first.text);
        if (help.indent === undefined && ind > 0) {
          help.indent = ind;
          continue;
        }
        if (help.indent !== undefined && ind >= help.indent) continue;
        help = undefined;
      }
      let text = first.text;
      while (text.endsWith('\\') && i + 1 < lines.length) text = text.slice(0, -1) + lines[++i]!.text;
      const line = stripComment(text).trim();
      if (line === '') continue;
      const sp = line.search(/\s/);
      const kw = sp < 0 ? line : line.slice(0, sp);
      const rest = sp < 0 ? '' : line.slice(sp).trim();
      switch (kw) {
        case 'config':
        case 'menuconfig': {
          const def: Def = { name: rest, type: undefined, frames: [...stack], own: [], where: first.where };
          defs.push(def);
          current = { kind: 'def', def };
          // A member of the nearest choice, unless a menu lies in between.
          for (let f = stack.length - 1; f >= 0; f--) {
            const fr = stack[f]!;
            if (fr.kind === 'menu') break;
            if (fr.kind === 'choice') {
              fr.members!.push(rest);
              break;
            }
          }
          break;
        }
        case 'choice': {
          const frame: Frame = { kind: 'choice', deps: [], members: [] };
          choices.push(frame.members!);
          stack.push(frame);
          current = { kind: 'frame', frame };
          break;
        }
        case 'menu': {
          const frame: Frame = { kind: 'menu', deps: [] };
          stack.push(frame);
          current = { kind: 'frame', frame };
          break;
        }
        case 'if':
          stack.push({ kind: 'if', deps: [parseExpr(rest)] });
          current = undefined;
          break;
        case 'endif':
        case 'endmenu':
        case 'endchoice': {
          const kind = kw.slice(3);
          const at = stack.map((f) => f.kind as string).lastIndexOf(kind);
          if (at >= 0) stack.length = at;
          current = undefined;
          break;
        }
        case 'source': {
          current = undefined;
          const target = unquote(rest);
          const rel = posix.normalize(target);
          if (rel.startsWith('..') || posix.isAbsolute(rel) || depth > 20) break;
          const relDir = posix.dirname(rel) === '.' ? '' : posix.dirname(rel);
          if (posix.basename(rel) !== CONFIG_FILE) {
            // Not busybox's layout: read the named file as it is.
            const text = await readFile(join(root, rel), 'utf8').catch(() => undefined);
            if (text !== undefined) {
              files.push(rel);
              await process(text.split('\n').map((t, n) => ({ text: t, where: `${rel}:${n + 1}` })), stack, depth + 1);
            }
            break;
          }
          if (done.has(relDir)) break;
          done.add(relDir);
          const sub = await load(relDir);
          if (sub) await process(sub, stack, depth + 1);
          break;
        }
        case 'depends': {
          const expr = parseExpr(rest.replace(/^on\b/, ''));
          if (current?.kind === 'def') current.def.own.push(expr);
          else if (current?.kind === 'frame') current.frame.deps.push(expr);
          break;
        }
        case 'select': {
          if (current?.kind !== 'def') break;
          const m = /^([A-Za-z0-9_]+)(?:\s+if\s+(.*))?$/.exec(rest);
          if (m) selects.push({ target: m[1]!, by: current.def.name, cond: m[2] === undefined ? undefined : parseExpr(m[2]) });
          break;
        }
        case 'bool':
        case 'boolean':
        case 'tristate':
        case 'string':
        case 'int':
        case 'hex':
        case 'def_bool':
        case 'def_tristate':
          if (current?.kind === 'def') current.def.type = kw.replace(/^def_/, '').replace('boolean', 'bool');
          break;
        case 'help':
        case '---help---':
          help = { indent: undefined };
          break;
        case 'comment':
        case 'mainmenu':
          current = undefined;
          break;
        default:
          break; // prompt, default, range, option, visible, imply, ...: not needed here
      }
    }
  };

  if (dirs.get('')?.files.has(CONFIG_FILE)) {
    done.add('');
    const top = await load('');
    if (top) await process(top, [], 0);
  }
  for (const relDir of [...dirs.keys()].sort()) {
    const entry = dirs.get(relDir)!;
    if (done.has(relDir) || !(entry.files.has(CONFIG_FILE) || entry.files.has(CONFIG_SRC))) continue;
    done.add(relDir);
    const lines = await load(relDir);
    if (lines) await process(lines, [], 0);
  }

  // Combine.
  const symbols = new Map<string, KconfigSymbol>();
  const perDef = new Map<string, (KExpr | undefined)[]>();
  for (const def of defs) {
    let sym = symbols.get(def.name);
    if (!sym) {
      sym = { name: def.name, type: def.type, depends: undefined, dependsText: undefined, refs: new Set(), selectedBy: [], choice: undefined, defined: [] };
      symbols.set(def.name, sym);
      perDef.set(def.name, []);
    }
    sym.type ??= def.type;
    sym.defined.push(def.where);
    const parts: KExpr[] = [];
    const seen = new Set<string>();
    for (const e of [...def.frames.flatMap((f) => f.deps), ...def.own]) {
      const t = formatExpr(e);
      if (!seen.has(t)) {
        seen.add(t);
        parts.push(e);
      }
    }
    perDef.get(def.name)!.push(parts.length === 0 ? undefined : parts.reduce((a, b) => ({ op: 'and', a, b })));
  }
  for (const [name, list] of perDef) {
    const sym = symbols.get(name)!;
    // Several definitions: the symbol is available when any of them is.
    if (list.some((e) => e === undefined)) continue;
    const uniq = [...new Map(list.map((e) => [formatExpr(e!), e!])).values()];
    sym.depends = uniq.reduce((a, b) => ({ op: 'or', a, b }));
    sym.dependsText = formatExpr(sym.depends);
    exprRefs(sym.depends, sym.refs);
  }
  for (const s of selects) symbols.get(s.target)?.selectedBy.push({ symbol: s.by, cond: s.cond });
  for (const members of choices) for (const m of members) {
    const sym = symbols.get(m);
    if (sym) sym.choice = members;
  }
  return { symbols, files };
}

async function walk(root: string, rel: string, dirs: Map<string, { files: Set<string> }>): Promise<void> {
  let entries: Dirent[];
  try {
    entries = await readdir(rel ? join(root, rel) : root, { withFileTypes: true });
  } catch {
    return;
  }
  const files = new Set<string>();
  const subdirs: string[] = [];
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    if (e.isFile()) files.add(e.name);
    else if (e.isDirectory()) subdirs.push(rel ? `${rel}/${e.name}` : e.name);
  }
  dirs.set(rel, { files });
  await Promise.all(subdirs.map((d) => walk(root, d, dirs)));
}

function indentOf(line: string): number {
  let n = 0;
  for (const c of line) {
    if (c === ' ') n++;
    else if (c === '\t') n = (Math.floor(n / 8) + 1) * 8;
    else break;
  }
  return n;
}

/** A Kconfig line without its `#` comment (a `#` inside quotes is kept). */
function stripComment(line: string): string {
  let q: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (q) {
      if (c === '\\') i++;
      else if (c === q) q = undefined;
    } else if (c === '"' || c === "'") q = c;
    else if (c === '#') return line.slice(0, i);
  }
  return line;
}

function unquote(s: string): string {
  const t = s.trim();
  return (t.startsWith('"') && t.endsWith('"')) || (t.startsWith("'") && t.endsWith("'")) ? t.slice(1, -1) : t;
}

// ---------------------------------------------------------------------------------------------
// Verification

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

