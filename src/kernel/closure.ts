// The dependency closure of a list of requested kernel modules, in load order (kmod's modprobe
// semantics): a request is a module name (`xen-netfront` = `xen_netfront`), or an alias
// (`xennet`, `crypto-crc32c`, matched like fnmatch against every module's aliases — an alias
// may name several modules, and all of them are loaded, as modprobe does); a module built into
// the kernel (modules.builtin) needs no file and is skipped.
// Edges: `depends=` (hard: a missing one is an error naming the chain `ext4 → jbd2 → missing`;
// a cycle is an error naming it) and `softdep pre:`/`post:` (soft: a target that resolves to
// nothing is a warning, as with modprobe). The order is topological: pre-softdeps and depends
// of a module come before it, post-softdeps after it.
import { join } from 'node:path';
import { DomuError, InputError } from '../core/errors.js';
import type { ModuleInfo } from './modinfo.js';
import { normalizeModuleName, resolveAlias, type ModuleIndex } from './modindex.js';

export interface ClosureModule {
  name: string;
  /** Path relative to the modules directory (kernel/fs/ext4/ext4.ko), or extra/<file> for out-of-tree modules. */
  path: string;
  /** The file on the build host. */
  file: string;
  info: ModuleInfo;
  /** Why it is in the closure: the first chain that reached it (`ext4 → jbd2`). */
  via: string[];
  kind: 'requested' | 'depends' | 'softdep';
}

export interface Closure {
  /** Load order. */
  modules: ClosureModule[];
  /** Requested names (or dependencies) that are built into the kernel. */
  builtin: { name: string; via: string[] }[];
  /** Each request and the module names it resolved to ([] = built in). */
  requests: { request: string; modules: string[] }[];
  /** Soft dependencies that resolved to nothing, and other non-fatal findings. */
  warnings: string[];
}

/** Modules from outside the modules directory (out-of-tree builds), by name. */
export interface ExtraModule {
  name: string;
  /** Where it goes under lib/modules/<release>, e.g. extra/domu_hello.ko. */
  path: string;
  file: string;
  info: ModuleInfo;
}

export interface ClosureOptions {
  /** Reads a module file's .modinfo (readModinfo, with the run's exec environment). */
  readInfo: (file: string) => Promise<ModuleInfo>;
  extra?: readonly ExtraModule[];
}

type Resolved = { kind: 'module'; name: string } | { kind: 'builtin'; name: string };

/** What a name or alias stands for: module names in the index, built-in modules, or nothing. */
export function resolveName(index: ModuleIndex, extra: ReadonlyMap<string, ExtraModule>, request: string): Resolved[] {
  const name = normalizeModuleName(request);
  if (extra.has(name) || index.paths.has(name)) return [{ kind: 'module', name }];
  if (index.builtin.has(name)) return [{ kind: 'builtin', name }];
  const fromAliases = resolveAlias(index.aliases, request);
  if (fromAliases.length) return fromAliases.map((n) => ({ kind: 'module' as const, name: n }));
  const builtinAlias = resolveAlias(index.builtinAliases, request);
  if (builtinAlias.length) return builtinAlias.map((n) => ({ kind: 'builtin' as const, name: n }));
  return [];
}

/** The closest module names to a misspelt request, for the error's hint. */
function suggestions(index: ModuleIndex, request: string): string[] {
  const want = normalizeModuleName(request);
  const scored: [number, string][] = [];
  for (const name of index.paths.keys()) {
    const d = editDistance(want, name, 3);
    if (d <= 2) scored.push([d, name]);
  }
  return scored.sort((a, b) => a[0] - b[0] || a[1].localeCompare(b[1])).slice(0, 3).map(([, n]) => n);
}

function editDistance(a: string, b: string, cap: number): number {
  if (Math.abs(a.length - b.length) >= cap) return cap;
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

const arrow = (chain: readonly string[]) => chain.join(' → ');

/** The closure of `requests` (see the file comment). */
export async function moduleClosure(index: ModuleIndex, requests: readonly string[], opts: ClosureOptions): Promise<Closure> {
  const extra = new Map((opts.extra ?? []).map((m) => [normalizeModuleName(m.name), m]));
  const out: Closure = { modules: [], builtin: [], requests: [], warnings: [] };
  const done = new Map<string, ClosureModule>();
  const builtinSeen = new Set<string>();
  const onStack: string[] = [];

  const load = async (name: string): Promise<{ path: string; file: string; info: ModuleInfo }> => {
    const x = extra.get(name);
    if (x) return { path: x.path, file: x.file, info: x.info };
    const path = index.paths.get(name)!;
    const file = join(index.dir, path);
    return { path, file, info: await opts.readInfo(file) };
  };

  const visit = async (name: string, chain: string[], kind: ClosureModule['kind']): Promise<void> => {
    if (done.has(name)) return;
    const cycleAt = onStack.indexOf(name);
    if (cycleAt >= 0) {
      throw new DomuError(`module dependency cycle: ${arrow([...onStack.slice(cycleAt), name])}`, { hint: `the modules directory ${index.dir} is inconsistent; regenerate the modules or report it to the kernel's packager` });
    }
    onStack.push(name);
    const { path, file, info } = await load(name);
    for (const soft of info.softdepPre) await visitSoft(soft, [...chain, `${soft} (softdep)`]);
    for (const dep of info.depends) {
      const targets = resolveName(index, extra, dep);
      const mod = targets.find((t) => t.kind === 'module');
      if (mod) await visit(mod.name, [...chain, mod.name], 'depends');
      else if (targets.length) noteBuiltin(targets[0]!.name, [...chain, dep]);
      else throw new DomuError(`missing module dependency: ${arrow([...chain, dep, 'missing'])}`, { hint: `${index.dir} has no module ${dep}; use a complete modules directory for this kernel` });
    }
    onStack.pop();
    const m: ClosureModule = { name, path, file, info, via: chain, kind };
    done.set(name, m);
    out.modules.push(m);
    for (const soft of info.softdepPost) await visitSoft(soft, [...chain, `${soft} (softdep)`]);
  };

  const visitSoft = async (request: string, chain: string[]): Promise<void> => {
    const targets = resolveName(index, extra, request);
    if (!targets.length) {
      out.warnings.push(`soft dependency ${arrow(chain)} resolves to no module; going on without it`);
      return;
    }
    for (const t of targets) {
      if (t.kind === 'builtin') noteBuiltin(t.name, chain);
      else if (onStack.includes(t.name)) out.warnings.push(`soft dependency loop ${arrow([...chain.slice(0, -1), t.name])} ignored`);
      else await visit(t.name, [...chain.slice(0, -1), t.name], 'softdep');
    }
  };

  const noteBuiltin = (name: string, via: string[]) => {
    if (builtinSeen.has(name)) return;
    builtinSeen.add(name);
    out.builtin.push({ name, via });
  };

  for (const request of requests) {
    const targets = resolveName(index, extra, request);
    if (!targets.length) {
      const close = suggestions(index, request);
      throw new InputError(
        `no kernel module or alias "${request}" in ${index.dir}`,
        close.length ? `did you mean ${close.join(', ')}?` : 'check the name with `domu modules NAME` (module names use - or _, aliases like xennet work too)',
      );
    }
    out.requests.push({ request, modules: targets.filter((t) => t.kind === 'module').map((t) => t.name) });
    for (const t of targets) {
      if (t.kind === 'builtin') noteBuiltin(t.name, [request]);
      else await visit(t.name, [t.name], 'requested');
    }
  }
  return out;
}

/** Every module's hard dependencies, transitively, nearest first: the lists of a modules.dep. */
export function transitiveDepends(closure: Closure): Map<string, ClosureModule[]> {
  const byName = new Map(closure.modules.map((m) => [m.name, m]));
  const position = new Map(closure.modules.map((m, i) => [m.name, i]));
  const out = new Map<string, ClosureModule[]>();
  for (const m of closure.modules) {
    const seen = new Set<string>();
    const walk = (n: ClosureModule) => {
      for (const d of n.info.depends) {
        const dep = byName.get(normalizeModuleName(d));
        if (dep && !seen.has(dep.name)) {
          seen.add(dep.name);
          walk(dep);
        }
      }
    };
    walk(m);
    // modprobe loads a modules.dep list from its end: list the last-loaded first.
    out.set(
      m.name,
      [...seen].map((n) => byName.get(n)!).sort((a, b) => position.get(b.name)! - position.get(a.name)!),
    );
  }
  return out;
}
