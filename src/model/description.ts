// Loading the build description: defaults ← guest.yaml ← flags (flags win), validated in one go.
// Every problem is reported with where it was written: `file:line:col: key.path: message` for the
// file, `flag --set key=value: key.path: message` for a flag. Sync and light (zod + yaml only), so
// a bad description fails in milliseconds, before anything runs.
import { readTextLimited, TooLargeError } from '../core/textfile.js';
import { isMap, isScalar, LineCounter, parseDocument, type Document, type Node as YamlNode } from 'yaml';
import { InputError } from '../core/errors.js';
import { allowedKeys, DEFAULTS, descriptionSchema, SECTIONS, type Description } from './schema.js';

export type { Description } from './schema.js';
export { DEFAULTS } from './schema.js';

export type Key = string | number;

/** A value given on the command line. `flag` is how the user wrote it, e.g. `--set image.size=2G`. */
export type Override = { path: Key[]; value: unknown; flag: string };

export interface LoadOptions {
  /** The description file; its name is used in messages. Without it: defaults + overrides. */
  file?: string;
  /** The description's text (instead of reading `file`). */
  text?: string;
  overrides?: Override[];
}

/** One problem, located. `line`/`column` (1-based) when it is in the file, `flag` when it came from one. */
export interface DescriptionIssue {
  path: string;
  message: string;
  file?: string;
  line?: number;
  column?: number;
  flag?: string;
}

/** The description is invalid. `message` has one line per issue, most important first. */
export class DescriptionError extends InputError {
  readonly issues: DescriptionIssue[];
  constructor(issues: DescriptionIssue[], hint?: string) {
    super(issues.map(formatIssue).join('\n'), hint);
    this.issues = issues;
  }
}

const DOC_HINT = 'guest.yaml at the top of the project documents every key and its default';

export function formatIssue(i: DescriptionIssue): string {
  const at =
    i.flag !== undefined
      ? `flag ${i.flag}: `
      : i.file !== undefined
        ? `${i.file}${i.line !== undefined ? `:${i.line}:${i.column ?? 1}` : ''}: `
        : '';
  return `${at}${i.path === '' ? '' : `${i.path}: `}${i.message}`;
}

// ---------------------------------------------------------------------------------------------
// Flags

const SET_KEY_RE = /^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$/;

/** Parse a flag's value the way the file would read it: `2` is a number, `[a, b]` a list, `1.35.0` text. */
export function parseFlagValue(text: string, flag: string): unknown {
  const doc = parseDocument(text, { prettyErrors: false });
  const err = doc.errors[0];
  if (err !== undefined) {
    throw new InputError(`flag ${flag}: cannot read the value ${JSON.stringify(text)}: ${err.message}`, 'quote the value for the shell, e.g. --set \'modules=[xen-netfront, xen-blkfront]\'');
  }
  try {
    return doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new InputError(`flag ${flag}: cannot read the value ${JSON.stringify(text)}: ${(e as Error).message}`);
  }
}

/** `--set key.path=value` (the text after `--set`). Numeric segments index lists: `hosts.1.bridge=xenbr1`. */
export function parseSetFlag(text: string): Override {
  const flag = `--set ${text}`;
  const eq = text.indexOf('=');
  const key = eq < 0 ? '' : text.slice(0, eq).trim();
  if (eq < 0 || !SET_KEY_RE.test(key)) {
    throw new InputError(
      `flag ${flag}: expected key.path=value`,
      'for example --set image.size=2G, --set busybox.version=1.35.0 or --set hosts.1.bridge=xenbr1',
    );
  }
  const path: Key[] = key.split('.').map((seg) => (/^\d+$/.test(seg) ? Number(seg) : seg));
  return { path, value: parseFlagValue(text.slice(eq + 1), flag), flag };
}

/** An override for a dedicated flag (`--busybox-version 1.35.0`); the value is read as by --set. */
export function flagOverride(flagName: string, path: Key[], text: string): Override {
  const flag = `${flagName} ${text}`;
  return { path, value: parseFlagValue(text, flag), flag };
}

// ---------------------------------------------------------------------------------------------
// Merging

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** `over` merged into `base`: mappings key by key, everything else (lists too) replaced whole. */
function deepMerge(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return structuredClone(over);
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = Object.hasOwn(base, k) ? deepMerge(base[k], v) : structuredClone(v);
  return out;
}

function pathText(path: readonly PropertyKey[]): string {
  return path.map(String).join('.');
}

/** A copy of `root` with the override applied at its path (creating mappings on the way). */
function applyOverride(root: Record<string, unknown>, o: Override): Record<string, unknown> {
  if (o.path.length === 0) {
    if (!isPlainObject(o.value)) throw new DescriptionError([{ path: '', flag: o.flag, message: 'the top level must be a mapping of sections' }]);
    return deepMerge(root, o.value) as Record<string, unknown>;
  }
  const set = (container: unknown, i: number): unknown => {
    const key = o.path[i]!;
    const last = i === o.path.length - 1;
    if (Array.isArray(container)) {
      if (typeof key !== 'number') {
        throw new DescriptionError([
          { path: pathText(o.path.slice(0, i + 1)), flag: o.flag, message: `${pathText(o.path.slice(0, i)) || 'the top level'} is a list; use an index, e.g. ${pathText([...o.path.slice(0, i), 0, ...o.path.slice(i)])}` },
        ]);
      }
      if (key > container.length) {
        throw new DescriptionError([
          { path: pathText(o.path.slice(0, i + 1)), flag: o.flag, message: `index ${key} is past the end of ${pathText(o.path.slice(0, i))} (${container.length} entries; the next one is ${container.length})` },
        ]);
      }
      const copy = [...container];
      copy[key] = last ? deepMerge(copy[key], o.value) : set(copy[key], i + 1);
      return copy;
    }
    const obj: Record<string, unknown> = isPlainObject(container) ? { ...container } : {};
    const k = String(key);
    obj[k] = last ? deepMerge(obj[k], o.value) : set(obj[k], i + 1);
    return obj;
  };
  return set(root, 0) as Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------------
// Reading the file

/** Larger than any build description: past this, the file is not one (e.g. --config /dev/zero). */
const MAX_DESCRIPTION_BYTES = 1 << 20;

function readDescription(file: string): string {
  const fail = (e: unknown): never => {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : code === 'EACCES' ? 'permission denied' : (e as Error).message;
    throw new InputError(
      `cannot read build description ${file}: ${why}`,
      code === 'ENOENT' || code === 'EISDIR'
        ? `pass an existing file with --config FILE (${DOC_HINT})`
        : undefined,
    );
  };
  try {
    return readTextLimited(file, MAX_DESCRIPTION_BYTES);
  } catch (e) {
    if (e instanceof TooLargeError) {
      throw new InputError(`cannot read build description ${file}: it is larger than 1 MiB (or never ends), which no build description is`, `pass the guest.yaml file with --config FILE (${DOC_HINT})`);
    }
    return fail(e);
  }
}

interface Source {
  file: string;
  doc: Document.Parsed;
  lines: LineCounter;
}

function position(src: Source, offset: number): { line: number; column: number } {
  const p = src.lines.linePos(offset);
  return { line: p.line, column: p.col };
}

/** The description as plain data, or the YAML problems located in the file. */
function readSource(file: string, text: string): { src: Source; data: Record<string, unknown> } {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const src: Source = { file, doc, lines };
  if (doc.errors.length > 0) {
    throw new DescriptionError(
      doc.errors.map((e) => ({ path: '', file, ...position(src, e.pos[0]), message: `YAML syntax error: ${e.message.replace(/\s*\n\s*/g, ' ')}` })),
      'fix the YAML syntax first (indentation with spaces, "key: value", lists as "- item" or [a, b])',
    );
  }
  const contents = doc.contents;
  if (contents === null || (isScalar(contents) && contents.value === null)) return { src, data: {} };
  if (!isMap(contents)) {
    const got = isScalar(contents) ? JSON.stringify(String(contents.value)) : 'a list';
    throw new DescriptionError(
      [{ path: '', file, ...position(src, contents.range[0]), message: `the build description must be a mapping of sections (${allowedKeys([])!.join(', ')}), got ${got}` }],
      DOC_HINT,
    );
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new DescriptionError([{ path: '', file, message: `cannot read the YAML: ${(e as Error).message}` }]);
  }
  const out = data as Record<string, unknown>;
  // An empty section (`kernel:` with every key commented out) means its defaults.
  for (const s of SECTIONS) if (Object.hasOwn(out, s) && out[s] === null) delete out[s];
  return { src, data: out };
}

// ---------------------------------------------------------------------------------------------
// Locating issues

function getPath(v: unknown, path: readonly Key[]): { found: boolean; value?: unknown } {
  let cur = v;
  for (const k of path) {
    if (cur === null || typeof cur !== 'object' || !Object.hasOwn(cur, k)) return { found: false };
    cur = (cur as Record<string, unknown>)[k as string];
  }
  return { found: true, value: cur };
}

function startsWith(path: readonly Key[], prefix: readonly Key[]): boolean {
  return prefix.length <= path.length && prefix.every((k, i) => String(k) === String(path[i]));
}

function fileNode(src: Source, path: readonly Key[]): YamlNode | undefined {
  const node = path.length === 0 ? src.doc.contents : src.doc.getIn(path, true);
  return node !== null && typeof node === 'object' && 'range' in (node as object) && (node as YamlNode).range ? (node as YamlNode) : undefined;
}

/** The key node of `path` (the last segment) in its parent mapping. */
function fileKeyNode(src: Source, path: readonly Key[]): YamlNode | undefined {
  const parent = fileNode(src, path.slice(0, -1));
  if (!isMap(parent)) return undefined;
  const name = String(path[path.length - 1]);
  for (const pair of parent.items) {
    if (isScalar(pair.key) && String(pair.key.value) === name && pair.key.range) return pair.key;
  }
  return undefined;
}

type Where = { flag: string } | { offset: number } | { file: true } | undefined;

/**
 * Where the value at `path` was written. From the longest prefix up: a flag that set it, else the
 * file's node, else a flag that wrote inside it (e.g. created hosts.2). `keyNode`: point at the key
 * itself (unknown keys).
 */
function locate(path: readonly Key[], overrides: readonly Override[], src: Source | undefined, keyNode: boolean): Where {
  for (let n = path.length; n >= 0; n--) {
    const p = path.slice(0, n);
    for (let i = overrides.length - 1; i >= 0; i--) {
      const o = overrides[i]!;
      if (startsWith(p, o.path) && (p.length === o.path.length || getPath(o.value, p.slice(o.path.length)).found)) return { flag: o.flag };
    }
    if (src !== undefined) {
      let node = keyNode && n === path.length && n > 0 ? fileKeyNode(src, p) : fileNode(src, p);
      // An empty value (`modules:`) has no text of its own: point at its key.
      if (isScalar(node) && node.value === null && node.range?.[0] === node.range?.[1] && n > 0) node = fileKeyNode(src, p) ?? node;
      if (node?.range) return { offset: node.range[0] };
    }
    for (let i = overrides.length - 1; i >= 0; i--) {
      const o = overrides[i]!;
      if (startsWith(o.path, p) && o.path.length > p.length) return { flag: o.flag };
    }
  }
  return src !== undefined ? { file: true } : undefined;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0]!;
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = d[j]!;
      d[j] = Math.min(d[j]! + 1, d[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return d[b.length]!;
}

function unknownKeyMessage(parent: readonly Key[], key: string): string {
  const allowed = allowedKeys(parent) ?? [];
  const where = parent.length === 0 ? 'at the top level' : `in ${pathText(parent)}`;
  const close = allowed.filter((k) => editDistance(k.toLowerCase(), key.toLowerCase()) <= Math.max(1, Math.floor(k.length / 3)));
  const guess = close.length > 0 ? `; did you mean "${close[0]}"?` : '';
  return `unknown key ${JSON.stringify(key)} ${where} (allowed: ${allowed.join(', ')})${guess}`;
}

// ---------------------------------------------------------------------------------------------

/**
 * The validated build description: defaults ← `file` (or `text`) ← `overrides`, mappings merged key
 * by key, lists replaced whole. Throws InputError (exit 2) naming file:line:col or the flag, and the
 * key path, of every problem.
 */
export function loadDescription(opts: LoadOptions = {}): Description {
  const overrides = opts.overrides ?? [];
  let src: Source | undefined;
  let data: Record<string, unknown> = {};
  if (opts.file !== undefined || opts.text !== undefined) {
    const file = opts.file ?? '<description>';
    const read = readSource(file, opts.text ?? readDescription(file));
    src = read.src;
    data = read.data;
  }
  // Flags apply on top of defaults + file, so `--set hosts.1.bridge=xenbr1` finds the default hosts.
  data = deepMerge(structuredClone(DEFAULTS), data) as Record<string, unknown>;
  for (const o of overrides) data = applyOverride(data, o);

  const result = descriptionSchema.safeParse(data);
  if (result.success) return result.data;

  const located: (DescriptionIssue & { order: number })[] = [];
  for (const issue of result.error.issues) {
    const base = issue.path.map((k) => (typeof k === 'number' ? k : String(k)));
    const items: { path: Key[]; message: string; keyNode: boolean }[] =
      issue.code === 'unrecognized_keys'
        ? issue.keys.map((k) => ({ path: [...base, k], message: unknownKeyMessage(base, k), keyNode: true }))
        : [{ path: base, message: issue.message, keyNode: false }];
    for (const it of items) {
      const where = locate(it.path, overrides, src, it.keyNode);
      const entry: DescriptionIssue & { order: number } = { path: pathText(it.path), message: it.message, order: Number.MAX_SAFE_INTEGER };
      if (where !== undefined && 'flag' in where) {
        entry.flag = where.flag;
        entry.order = 2 ** 52 + overrides.findIndex((o) => o.flag === where.flag);
      } else if (src !== undefined && where !== undefined) {
        entry.file = src.file;
        if ('offset' in where) {
          Object.assign(entry, position(src, where.offset));
          entry.order = where.offset;
        }
      }
      located.push(entry);
    }
  }
  // File issues in reading order, then flags in the order given, then the rest; no duplicates.
  const seen = new Set<string>();
  const issues = located
    .map((e, i) => ({ e, i }))
    .sort((a, b) => a.e.order - b.e.order || a.i - b.i)
    .map(({ e }) => {
      const { order: _order, ...issue } = e;
      return issue;
    })
    .filter((i) => {
      const line = formatIssue(i);
      if (seen.has(line)) return false;
      seen.add(line);
      return true;
    });
  throw new DescriptionError(issues, issues.length > 1 ? `${issues.length} problems; ${DOC_HINT}` : DOC_HINT);
}
