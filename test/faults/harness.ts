// Shared machinery of the fault suite: a lab (description, skel, out, store, private cache) that
// real `domu build` runs work in, runs paused at a fault point (DOMU_FAULT_PAUSE), and the
// checks that nothing was left behind.
import { existsSync } from 'node:fs';
import { cp, lstat, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { PROJECT_ROOT } from '../../src/core/paths.js';
import { sha256Sparse } from '../../src/fs/sparse.js';
import { mountPoints } from '../../src/core/mounts.js';
import { memoryLogger } from '../../src/core/log.js';
import { startDomu } from '../helpers/cli.js';

export interface Lab {
  root: string;
  guest: string;
  skel: string;
  out: string;
  store: string;
  cache: string;
  tarball: string;
}

/** A lab under `root`: the project's skel and devices copied, a description naming `kernelImage`. */
export async function makeLab(root: string, tarball: string, kernelImage: string): Promise<Lab> {
  const skel = join(root, 'rootfs-skel');
  await cp(join(PROJECT_ROOT, 'rootfs-skel'), skel, { recursive: true });
  await cp(join(PROJECT_ROOT, 'rootfs-devices.txt'), join(root, 'rootfs-devices.txt'));
  const guest = join(root, 'guest.yaml');
  await writeFile(guest, `busybox:\n  version: 1.35.0\nkernel:\n  image: ${kernelImage}\n`);
  const lab = { root, guest, skel, out: join(root, 'out'), store: join(root, 'store'), cache: join(root, 'cache'), tarball };
  await mkdir(lab.store, { recursive: true });
  return lab;
}

/** A file in the guest's skel whose content names the case: every case builds a new image. */
export async function markCase(lab: Lab, name: string): Promise<void> {
  await writeFile(join(lab.skel, 'etc', 'domu-case'), `${name}\n`);
}

export function buildArgs(lab: Lab, extra: string[] = []): string[] {
  return ['build', '--json', '--config', lab.guest, '--cache-dir', lab.cache, '--source', lab.tarball, '--jobs', '2', '--out', lab.out, ...extra];
}

export function publishArgs(lab: Lab): string[] {
  return ['--publish', '--store', lab.store, '--allow-unmounted'];
}

export interface Paused {
  child: ReturnType<typeof startDomu>;
  pid: number;
  /** The stderr seen so far. */
  stderr: () => string;
}

/** Start `domu args` paused at `point`; resolves once it says it reached the point. */
export async function startPaused(args: string[], point: string, env: Record<string, string> = {}): Promise<Paused> {
  const child = startDomu(args, { env: { ...env, DOMU_FAULT_PAUSE: point } });
  let err = '';
  const reached = new Promise<number>((res, rej) => {
    child.stderr?.on('data', (c: Buffer) => {
      err += c.toString();
      const m = /domu: fault point (.+) reached \(pid (\d+)\)/.exec(err);
      if (m && m[1] === point) res(Number(m[2]));
    });
    void child.then((r) => rej(new Error(`domu exited (${r.exitCode ?? r.signal}) before reaching ${point}:\n${err}`)));
  });
  const pid = await reached;
  return { child, pid, stderr: () => err };
}

/** Every name starting with `.tmp-` below `dir` (not below a directory named in `skip`). */
export async function tempNames(dir: string, skip: string[] = []): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string): Promise<void> => {
    let names: string[];
    try {
      names = await readdir(d);
    } catch {
      return;
    }
    for (const n of names) {
      const p = join(d, n);
      if (skip.includes(p)) continue;
      if (n.startsWith('.tmp-')) found.push(p);
      const st = await lstat(p).catch(() => undefined);
      if (st?.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return found;
}

/** Resources of a run's journal (what it had set up), read while it is paused. */
export async function journalOf(cache: string, pid: number): Promise<{ kind: string; path?: string; dir?: string; file?: string }[]> {
  const dir = join(cache, 'journals');
  const name = (await readdir(dir)).find((n) => n.startsWith(`${pid}-`));
  if (!name) return [];
  return (await readFile(join(dir, name), 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { kind: string })
    .filter((r) => r.kind !== 'run');
}

/** Loop devices whose backing file is below `root`. */
export async function loopsUnder(root: string): Promise<string[]> {
  const r = await execa('losetup', ['-a', '-n', '-O', 'NAME,BACK-FILE'], { reject: false });
  return String(r.stdout)
    .split('\n')
    .filter((l) => l.includes(root));
}

export async function mountsUnder(roots: string[]): Promise<string[]> {
  return (await mountPoints()).filter((m) => roots.some((r) => m === r || m.startsWith(`${r}/`)));
}

/** What is left of a journal's resources (empty when everything was undone). */
export async function stillThere(resources: Awaited<ReturnType<typeof journalOf>>, pid: number): Promise<string[]> {
  const mounts = await mountPoints();
  const left: string[] = [];
  for (const r of resources) {
    if (r.kind === 'mount' && mounts.includes(r.path!)) left.push(`mounted ${r.path}`);
    // Paths inside the run's own directory (cache/runs/<stamp>-<command>-<pid>/) are its logs and scratch, kept.
    if (r.kind === 'path' && existsSync(r.path!) && !new RegExp(`/runs/[^/]+-${pid}/`).test(r.path!)) left.push(`exists ${r.path}`);
    if (r.kind === 'loop' && (await loopsUnder(r.file!)).length) left.push(`loop device of ${r.file}`);
    if (r.kind === 'lock' && existsSync(r.path!)) {
      const holder = JSON.parse(await readFile(r.path!, 'utf8').catch(() => '{}')) as { pid?: number };
      if (holder.pid === pid) left.push(`lock ${r.path} of pid ${pid}`);
    }
    if (r.kind === 'tempdir') {
      const mine = (await readdir(r.dir!).catch(() => [] as string[])).filter((n) => n.startsWith('.tmp-') && n.includes(`-${pid}-`));
      left.push(...mine.map((n) => `temp ${join(r.dir!, n)}`));
    }
  }
  return left;
}

/** sha256 of every regular file below `dir`. */
export async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const n of (await readdir(d).catch(() => [] as string[])).sort()) {
      const p = join(d, n);
      const st = await lstat(p);
      const r = rel ? `${rel}/${n}` : n;
      if (st.isDirectory()) await walk(p, r);
      else if (st.isFile()) out[r] = await sha256File(p);
      else out[r] = `other:${st.mode}`;
    }
  };
  await walk(dir, '');
  return out;
}

/** sha256 of a file's bytes; holes of sparse files are hashed as the zeros they read as, without reading them. */
async function sha256File(p: string): Promise<string> {
  return sha256Sparse({ log: memoryLogger(), signal: new AbortController().signal }, p);
}

/** `e2fsck -fn` of an image: true when clean. */
export async function fsckClean(image: string): Promise<boolean> {
  const r = await execa('e2fsck', ['-fn', image], { reject: false });
  return r.exitCode === 0;
}

/** The first line of domu's error on stderr (`domu build: error: …`). */
export function errorLine(stderr: string): string {
  return stderr.split('\n').find((l) => /^domu [a-z]+: error: /.test(l)) ?? '(no error line)';
}
