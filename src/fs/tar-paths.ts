// Where a path of a tar archive lands inside the extracted tree (tar-tree.ts): by name alone, or
// the way the kernel will resolve it, through the archive's own symlinks. Paths are lists of
// components relative to the tree's root; null means the path climbs out of the tree.

const MAX_LINK_DEPTH = 40;

export function dirOf(rel: string): string[] {
  const comps = rel.split('/');
  comps.pop();
  return comps;
}

/** Resolve `target` against `dir` by name only; null when it climbs above the root. */
export function lexicalResolve(dir: string[], target: string): string[] | null {
  const cur = [...dir];
  for (const c of target.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (cur.length === 0) return null;
      cur.pop();
    } else cur.push(c);
  }
  return cur;
}

/** Resolve `target` against `dir` the way the kernel will, following the archive's own symlinks. */
export function resolveThroughLinks(links: Map<string, { target: string }>, dir: string[], target: string, depth: number): string[] | null | 'loop' {
  if (target.startsWith('/')) return null;
  let cur = [...dir];
  for (const c of target.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (cur.length === 0) return null;
      cur.pop();
      continue;
    }
    cur.push(c);
    const link = links.get(cur.join('/'));
    if (link !== undefined) {
      if (depth >= MAX_LINK_DEPTH) return 'loop';
      const r = resolveThroughLinks(links, cur.slice(0, -1), link.target, depth + 1);
      if (r === null || r === 'loop') return r;
      cur = r;
    }
  }
  return cur;
}
