// The building blocks of the description's schema (schema.ts, network.ts): values as the user
// would recognise them in messages, checked text, enumerations and strict sections.
import { z } from 'zod';
import { CONFIG_UNSAFE } from '../xen/xencfg.js';

/** A value as the user would recognise it in an error message. */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'an empty value';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return typeof v;
}

/** `expected X, got Y`, or `missing (expected X)` when there is no value. */
export function expected(what: string, input: unknown, hint = ''): string {
  if (input === undefined) return `missing: expected ${what}`;
  return `expected ${what}, got ${describeValue(input)}${hint}`;
}

/** For a text field given a number or boolean that would do as text (YAML reads `7` as a number). */
export function quoteHint(input: unknown, test: (s: string) => boolean): string {
  return (typeof input === 'number' || typeof input === 'boolean') && test(String(input)) ? ' (put it in quotes to make it text)' : '';
}

/** A string checked by `test`; `what` reads as "expected <what>". */
export function text(what: string, test: (s: string) => boolean = (s) => s.length > 0) {
  return z
    .string({ error: (iss) => expected(what, iss.input, quoteHint(iss.input, test)) })
    .superRefine((s, ctx) => {
      if (!test(s)) ctx.addIssue({ code: 'custom', message: expected(what, s) });
    });
}

/** For a list field given nothing or one item. */
export function listHint(input: unknown): string {
  if (input === null) return ' (write [] for none)';
  if (typeof input === 'string') return ` (write [${input}] for a list of one)`;
  return '';
}

export function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  const list = values.join(', ');
  return z.enum(values, { error: (iss) => expected(`one of ${list}`, iss.input) });
}

export const matches = (re: RegExp) => (s: string) => re.test(s);

/**
 * Text that goes into quoted strings of generated files (Xen configs, sxp, ifcfg): no quotes of
 * either kind, no backslash (an escape in some of those grammars), no `#` (a comment in all of
 * them), no control characters (newline, NUL, …).
 */
export const safeText = (s: string) => !CONFIG_UNSAFE.test(s);
export const SAFE_NOTE = '(no quotes, backslashes, # or control characters)';
export const isAbsolutePath = (s: string) => s.startsWith('/') && safeText(s);
export const isPath = (s: string) => s.length > 0 && safeText(s);

export const OCTET = '(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
export const IPV4_RE = new RegExp(`^${OCTET}(?:\\.${OCTET}){3}$`);
export const CIDR_RE = new RegExp(`^${OCTET}(?:\\.${OCTET}){3}/(?:3[0-2]|[12]?\\d)$`);
const LABEL = '[a-z0-9](?:[a-z0-9-]*[a-z0-9])?';
export const IQN_RE = new RegExp(`^iqn\\.\\d{4}-(?:0[1-9]|1[0-2])\\.${LABEL}(?:\\.${LABEL})*:[a-z0-9.:-]+$`);

export function isNetmask(s: string): boolean {
  if (!IPV4_RE.test(s)) return false;
  const bits = s.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const inv = 2 ** 32 - 1 - bits;
  return (inv & (inv + 1)) === 0; // ones then zeros
}

/** An object whose unknown keys are errors, with a readable message when it is not a mapping. */
export function section<S extends z.ZodRawShape>(what: string, shape: S) {
  const keys = Object.keys(shape).join(', ');
  return z.strictObject(shape, {
    error: (iss) => (iss.code === 'invalid_type' ? expected(`a mapping of ${what} (${keys})`, iss.input) : undefined),
  });
}
