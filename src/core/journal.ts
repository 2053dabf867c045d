// The run journal: what a run set up that must not outlive it — temp paths, loop devices, mounts,
// lock files — written down BEFORE each resource exists, one JSON line each, in
// `<cache>/journals/<pid>-<starttime>.jsonl`. A run that ends (success, failure, SIGINT, SIGTERM)
// undoes its resources itself and deletes its journal. SIGKILL (or a machine crash) runs no
// cleanup at all: the next run finds the journal of a process that no longer lives and undoes
// what it lists, newest first, and says what it cleaned.
//
// Every undo is idempotent and checks before it acts: a path that is gone is skipped, a loop
// device is detached only while it still backs the recorded file, a mount point only unmounted
// while mounted, a lock file only removed while it still names the dead run. Temp names carry
// the pid of their creator (`.tmp-<name>-<pid>-<random>`), so for the many short-lived atomic
// writes the journal records only the directory ("tempdir") and recovery removes that dead
// pid's temp names in it.
//
// A journal is claimed by renaming it to `<name>.claimed-<pid>` before recovery, so two runs that
// start at once never undo the same journal twice.
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { lstat, readdir, readFile, rename, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { isTempName } from './tempname.js';
import { errorMessage } from './errors.js';
import type { ExecEnv } from './exec.js';
import { detachLoops, mountPoints, unmountIfMounted } from './mounts.js';

export type JournalResource =
  /** Removed recursively (never across a mount point). */
  | { kind: 'path'; path: string }
  /** The temp names (`.tmp-*-<pid>-*`) the run created in this directory are removed. */
  | { kind: 'tempdir'; dir: string }
  /** Loop devices still backing this file are detached. */
  | { kind: 'loop'; file: string }
  /** Unmounted (lazily when busy) while it is a mount point. */
  | { kind: 'mount'; path: string }
  /** A lock file, removed while it still names the run's pid and this host. */
  | { kind: 'lock'; path: string };

interface Header {
  kind: 'run';
  pid: number;
  start: number;
  host: string;
  command: string;
  started: string;
}

const JOURNALS = 'journals';

/** The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or undefined. */
export function processStart(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: fields count from the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const v = Number(fields[19]);
    return Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Whether the process that wrote a journal still runs (same pid AND same start time). */
export function isAlive(pid: number, start: number): boolean {
  return processStart(pid) === start;
}

export class RunJournal {
  private readonly tempDirs = new Set<string>();
  private closed = false;

  private constructor(readonly file: string) {}

  /** Open this process's journal in `cacheDir` (synchronous appends: SIGKILL may come at any line). */
  static open(cacheDir: string, command: string): RunJournal {
    const dir = join(cacheDir, JOURNALS);
    mkdirSync(dir, { recursive: true });
    const start = processStart(process.pid) ?? 0;
    const j = new RunJournal(join(dir, `${process.pid}-${start}.jsonl`));
    const header: Header = { kind: 'run', pid: process.pid, start, host: hostname(), command, started: new Date().toISOString() };
    appendFileSync(j.file, `${JSON.stringify(header)}\n`);
    return j;
  }

  record(r: JournalResource): void {
    if (this.closed) return;
    const abs = normalise(r);
    appendFileSync(this.file, `${JSON.stringify(abs)}\n`);
  }

  /** Called for every temp name created (atomic writes): the directory is recorded once. */
  noteTempDir(dir: string): void {
    const d = resolve(dir);
    if (this.closed || this.tempDirs.has(d)) return;
    this.tempDirs.add(d);
    this.record({ kind: 'tempdir', dir: d });
  }

  /** The run ended and undid its own resources: the journal goes. */
  async close(): Promise<void> {
    this.closed = true;
    await rm(this.file, { force: true });
  }
}

function normalise(r: JournalResource): JournalResource {
  switch (r.kind) {
    case 'tempdir':
      return { kind: 'tempdir', dir: resolve(r.dir) };
    case 'loop':
      return { kind: 'loop', file: resolve(r.file) };
    default:
      return { kind: r.kind, path: resolve(r.path) };
  }
}

let active: RunJournal | undefined;

/** The journal of the run in this process, if one is open (the CLI opens one per run). */
export function activeJournal(): RunJournal | undefined {
  return active;
}

export function setActiveJournal(j: RunJournal | undefined): void {
  active = j;
}

// ---------------------------------------------------------------------------------------------
// Recovery

export interface Recovered {
  pid: number;
  command: string;
  started: string;
  /** One phrase per resource undone, e.g. "unmounted /tmp/domu-mnt-x". */
  cleaned: string[];
  /** Resources that could not be undone (left for the next run, with the reason). */
  failed: string[];
}

/**
 * Undo the journals of dead runs in `cacheDir`. Journals of live processes (another build in
 * progress) are left alone. Returns what was cleaned, per dead run.
 */
export async function recoverDeadRuns(cacheDir: string, env: ExecEnv): Promise<Recovered[]> {
  const dir = join(cacheDir, JOURNALS);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const out: Recovered[] = [];
  for (const name of names) {
    const m = /^(\d+)-(\d+)\.jsonl(?:\.claimed-(\d+)-(\d+))?$/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    const start = Number(m[2]);
    if (pid === process.pid || isAlive(pid, start)) continue;
    // A claimed journal whose claimer died is claimed again.
    if (m[3] !== undefined && isAlive(Number(m[3]), Number(m[4]))) continue;
    const claimed = join(dir, `${pid}-${start}.jsonl.claimed-${process.pid}-${processStart(process.pid) ?? 0}`);
    try {
      await rename(join(dir, name), claimed);
    } catch {
      continue; // another run claimed it first
    }
    out.push(await undoJournal(claimed, pid, env));
  }
  return out;
}

async function undoJournal(file: string, pid: number, env: ExecEnv): Promise<Recovered> {
  const lines = (await readFile(file, 'utf8')).split('\n').filter(Boolean);
  let header: Partial<Header> = {};
  const resources: JournalResource[] = [];
  for (const l of lines) {
    let v: unknown;
    try {
      v = JSON.parse(l);
    } catch {
      continue; // a line cut by the kill: the resource it names was not created yet
    }
    const o = v as { kind?: string };
    if (o.kind === 'run') header = o as Header;
    else if (o.kind) resources.push(o as JournalResource);
  }
  const rec: Recovered = { pid, command: header.command ?? 'domu', started: header.started ?? '?', cleaned: [], failed: [] };
  for (const r of resources.reverse()) {
    try {
      const did = await undo(r, pid, header.host ?? hostname(), env);
      if (did) rec.cleaned.push(did);
    } catch (e) {
      rec.failed.push(`${describe(r)}: ${errorMessage(e)}`);
    }
  }
  if (rec.failed.length === 0) await rm(file, { force: true });
  return rec;
}

function describe(r: JournalResource): string {
  switch (r.kind) {
    case 'tempdir':
      return `temp files in ${r.dir}`;
    case 'loop':
      return `loop device of ${r.file}`;
    default:
      return `${r.kind} ${r.path}`;
  }
}

async function undo(r: JournalResource, pid: number, host: string, env: ExecEnv): Promise<string | undefined> {
  switch (r.kind) {
    case 'mount':
      return (await unmountIfMounted(env, r.path)) ? `unmounted ${r.path}` : undefined;
    case 'loop': {
      const devs = await detachLoops(env, r.file);
      return devs.length ? `detached ${devs.join(', ')} (${r.file})` : undefined;
    }
    case 'path': {
      const inside = (await mountPoints()).filter((m) => m === r.path || m.startsWith(`${r.path}/`));
      if (inside.length) throw new Error(`${inside[0]} is still mounted; not removing ${r.path}`);
      if (!(await exists(r.path))) return undefined;
      await rm(r.path, { recursive: true, force: true });
      return `removed ${r.path}`;
    }
    case 'tempdir': {
      let names: string[];
      try {
        names = await readdir(r.dir);
      } catch {
        return undefined;
      }
      const mine = names.filter((n) => isTempName(n) && n.includes(`-${pid}-`));
      for (const n of mine) await rm(join(r.dir, n), { recursive: true, force: true });
      return mine.length ? `removed ${mine.length} temp file${mine.length === 1 ? '' : 's'} in ${r.dir}` : undefined;
    }
    case 'lock': {
      let holder: { pid?: number; host?: string };
      try {
        holder = JSON.parse(await readFile(r.path, 'utf8')) as typeof holder;
      } catch {
        return undefined; // gone, or not ours to judge
      }
      if (holder.pid !== pid || holder.host !== host) return undefined;
      await rm(r.path, { force: true });
      return `released the lock ${r.path}`;
    }
  }
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(() => true, () => false);
}
