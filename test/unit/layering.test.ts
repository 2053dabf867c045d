// The floors of src/ (docs/architecture.md, "Map"): a folder imports only itself and the folders
// its row names, so a lower floor never reaches a higher one, and no two modules import each other
// through any chain (no cycles). Imports are read from the source text: static `import`/`export
// … from`, side-effect imports and `import('…')` (type-only imports count: a type is a dependency).
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = resolve('src');

/** Folder → the other folders it may import (the table in docs/architecture.md). */
const MAY_IMPORT: Record<string, string[]> = {
  cli: ['pipeline', 'stages', 'lab', 'model', 'store', 'xen', 'kernel', 'fs', 'busybox', 'fetch', 'core'],
  pipeline: ['stages', 'lab', 'model', 'store', 'xen', 'kernel', 'fs', 'busybox', 'fetch', 'core'],
  stages: ['lab', 'model', 'store', 'xen', 'kernel', 'fs', 'busybox', 'fetch', 'core'],
  lab: ['model', 'store', 'xen', 'fs', 'core'],
  model: ['xen', 'core'],
  store: ['fs', 'core'],
  kernel: ['fetch', 'core'],
  busybox: ['core'],
  fs: ['core'],
  xen: ['kernel', 'fs', 'fetch', 'core'],
  fetch: ['core'],
  core: [],
};

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? sources(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** The relative specifiers a module imports. */
function importsOf(text: string): string[] {
  const specs: string[] = [];
  const patterns = [
    /^(?:import|export)\b[^;]*?\sfrom\s+['"]([^'"]+)['"]/gm, // import … from '…', export … from '…'
    /^import\s+['"]([^'"]+)['"]/gm, // import '…'
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g, // import('…'), typeof import('…')
  ];
  for (const re of patterns) for (const m of text.matchAll(re)) specs.push(m[1]!);
  return specs.filter((s) => s.startsWith('.'));
}

const folderOf = (file: string): string => relative(SRC, file).split('/')[0]!;
const rel = (file: string): string => relative(resolve('.'), file);

const files = sources(SRC);
const graph = new Map<string, string[]>(
  files.map((f) => [f, importsOf(readFileSync(f, 'utf8')).map((s) => resolve(dirname(f), s).replace(/\.js$/, '.ts'))]),
);

/** Strongly connected components with more than one module, or a module importing itself (Tarjan). */
function cycles(g: Map<string, string[]>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of g.get(v) ?? []) {
      if (!g.has(w)) continue;
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || (g.get(v) ?? []).includes(v)) out.push(scc.map(rel).sort());
    }
  };
  for (const v of g.keys()) if (!idx.has(v)) visit(v);
  return out;
}

describe('the floors of src/', () => {
  it('reads the imports it checks', () => {
    expect(files.length).toBeGreaterThan(50);
    expect(importsOf("import type { A } from './a.js';\nimport {\n  b,\n  c,\n} from '../x/b.js';\nexport { d } from './d.js';\nimport 'e';\nconst f = await import('./f.js');"))
      .toEqual(['./a.js', '../x/b.js', './d.js', './f.js']);
  });

  it('has every folder in the table, and no file loose in src/', () => {
    const folders = [...new Set(files.map(folderOf))].sort();
    expect(folders.filter((f) => f.endsWith('.ts'))).toEqual([]);
    expect(folders.filter((f) => !(f in MAY_IMPORT))).toEqual([]);
  });

  it('imports only existing modules', () => {
    const missing = [...graph].flatMap(([f, deps]) => deps.filter((d) => !graph.has(d)).map((d) => `${rel(f)} → ${rel(d)}`));
    expect(missing).toEqual([]);
  });

  it('never imports from a folder its row does not name (no lower floor imports a higher one)', () => {
    const bad = [...graph].flatMap(([f, deps]) =>
      deps.filter((d) => folderOf(d) !== folderOf(f) && !MAY_IMPORT[folderOf(f)]!.includes(folderOf(d))).map((d) => `${rel(f)} → ${rel(d)}`),
    );
    expect(bad).toEqual([]);
  });

  it('has a table without cycles between folders', () => {
    const g = new Map(Object.entries(MAY_IMPORT).map(([k, v]) => [k, v]));
    expect(cycles(g)).toEqual([]);
  });

  it('has no import cycle between modules', () => {
    expect(cycles(graph)).toEqual([]);
  });

  it('has no source file over 400 lines', () => {
    const long = files
      .map((f) => ({ file: rel(f), lines: readFileSync(f, 'utf8').split('\n').length - 1 }))
      .filter((x) => x.lines > 400);
    expect(long).toEqual([]);
  });
});
