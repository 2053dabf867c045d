// Kconfig `.config` values for busybox (and Linux-style) builds: parse, merge a fragment and
// serialize. The Kconfig language (expressions, kconfig-expr.ts; the sources, kconfig-sources.ts)
// and the check after `make oldconfig` (kconfig-verify.ts) build on these.
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


export const PREFIX = 'CONFIG_';
const NAME_RE = /^[A-Za-z0-9_]+$/;
const ASSIGN_RE = /^CONFIG_([A-Za-z0-9_]+)=(.*)$/;
const NOT_SET_RE = /^#\s*CONFIG_([A-Za-z0-9_]+) is not set$/;
export const NUMBER_RE = /^(?:-?[0-9]+|0[xX][0-9a-fA-F]+)$/;

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

export function escapeString(s: string): string {
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
export function satisfies(wanted: KValue, final: KValue | undefined): boolean {
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
