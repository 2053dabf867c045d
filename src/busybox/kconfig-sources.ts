// The Kconfig sources of a busybox tree (`Config.in`, `Config.src` with the `//config:` lines
// of its .c files): each symbol's type, dependencies, selects and choice, for the reasons
// kconfig-verify.ts gives.
import type { Dirent } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join, posix, resolve } from 'node:path';
import { exprRefs, formatExpr, parseExpr, type KExpr } from './kconfig-expr.js';

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
