// Interruption at every stage: real `domu build --publish` runs, paused at each stage's start
// marker (and inside the image, publish and cache steps, where mounts, loop devices, temp files
// and locks are live), then stopped with SIGINT, SIGTERM or SIGKILL. After each: no mount, no
// loop device, no temp file, no lock of the run; nothing partial at a final path; the store as
// it was; and the next run succeeds, reusing the cache. SIGKILL runs no cleanup, so its leftovers
// must be undone by the next run from the journal, which says what it cleaned.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readdir, readlink, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkHeader } from '../../src/store/genheader.js';
import { getBusyboxTarball } from '../helpers/busybox-tarball.js';
import { domuJson, startDomu, type Summary } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import {
  buildArgs,
  errorLine,
  fsckClean,
  journalOf,
  loopsUnder,
  makeLab,
  markCase,
  mountsUnder,
  publishArgs,
  snapshot,
  startPaused,
  stillThere,
  tempNames,
  type Lab,
} from './harness.js';
import { reliability } from './reliability.js';

const isRoot = process.getuid?.() === 0;
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGKILL'] as const;
type Sig = (typeof SIGNALS)[number];
const EXIT: Record<Sig, number | undefined> = { SIGINT: 130, SIGTERM: 143, SIGKILL: undefined };

/** Every stage of `domu build --publish`, in order (stage names as the pipeline knows them). */
const STAGES = ['store', 'source', 'extract', 'kconfig', 'compile', 'kernel', 'modules', 'rootfs', 'initramfs', 'image', 'xen configs', 'record', 'publish'];
/** Points inside stages where resources are live. */
const INNER: { point: string; what: string; extra?: string[] }[] = [
  { point: 'image:mounted', what: 'the new image loop-mounted and being filled (populate: mount)', extra: ['--populate', 'mount'] },
  { point: 'image:populated', what: 'the new image written under a temp name, not yet checked' },
  { point: 'publish:busybox.img', what: 'the image half copied onto the store, store lock held' },
];
/** Cache entries produced under a temp name, on a cold cache (build --until kconfig). */
const CACHE_POINTS = ['cache:sources', 'cache:trees', 'cache:kconfig'];

let root: string;
let lab: Lab;

beforeAll(async () => {
  const [tarball, kernel] = await Promise.all([getBusyboxTarball(), getKernelPackage()]);
  root = await tempDir('domu-faults-interrupt-');
  lab = await makeLab(root, tarball, kernel.image);
}, 600_000);

afterAll(async () => {
  if (root && (await mountsUnder([root])).length === 0) await rm(root, { recursive: true, force: true });
});

/** Processes whose working directory is below `dir` (a make or compiler still running there). */
async function processesIn(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const cwd = await readlink(`/proc/${p}/cwd`).catch(() => '');
    if (cwd.startsWith(dir)) out.push(`${p} ${readFileSync(`/proc/${p}/comm`, 'utf8').trim()} in ${cwd}`);
  }
  return out;
}

async function noLeftovers(l: Lab): Promise<string[]> {
  const problems: string[] = [];
  problems.push(...(await mountsUnder([l.root])).map((m) => `mount ${m}`));
  problems.push(...(await loopsUnder(l.root)).map((d) => `loop ${d}`));
  for (const d of [l.out, l.store]) problems.push(...(await tempNames(d)).map((t) => `temp ${t}`));
  problems.push(...(await tempNames(l.cache, [join(l.cache, 'runs')])).map((t) => `temp ${t}`));
  if (existsSync(join(l.out, '.domu.lock'))) problems.push('out lock left');
  if (existsSync(join(l.store, '.domu-publish.lock'))) problems.push('store lock left');
  return problems;
}

/** Final paths in out/ hold whole files: the image is a clean ext4, build.json parses. */
async function outComplete(l: Lab): Promise<void> {
  const img = join(l.out, 'busybox.img');
  if (existsSync(img)) expect(await fsckClean(img), `${img} is not a clean ext4 image`).toBe(true);
  const rec = join(l.out, 'build.json');
  if (existsSync(rec)) expect(() => JSON.parse(readFileSync(rec, 'utf8')) as unknown).not.toThrow();
}

/** A store snapshot without temp names and the lock: what readers of the store see. */
function published(snap: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(snap).filter(([k]) => !k.split('/').some((p) => p.startsWith('.tmp-')) && k !== '.domu-publish.lock'));
}

function stageStatus(s: Summary, name: string): string | undefined {
  return s.stages.find((x) => x.name === name)?.status;
}

const journalsOf = (l: Lab, pid: number) => readdirSync(join(l.cache, 'journals')).filter((n) => n.startsWith(`${pid}-`));

/**
 * Stop a paused build with `sig`, check what it left, run the next build and check that it
 * succeeds, reuses the cache, and (after SIGKILL) cleaned up after the killed run.
 */
async function interruptAndRecover(
  sig: Sig,
  point: string,
  args: string[],
  next: string[],
  opts: { reusedStages: string[] },
): Promise<string> {
  const storeBefore = await snapshot(lab.store);
  const paused = await startPaused(args, point);
  const resources = await journalOf(lab.cache, paused.pid);
  paused.child.kill(sig);
  const r = await paused.child;
  const seen: string[] = [];
  if (sig === 'SIGKILL') {
    expect(r.signal).toBe('SIGKILL');
    // Nothing of the run may keep running (children die with it: parent-death signal).
    for (let i = 0; i < 50 && (await processesIn(lab.root)).length; i++) await sleep(100);
    expect(await processesIn(lab.root)).toEqual([]);
    seen.push(`killed; left ${(await stillThere(resources, paused.pid)).length} of ${resources.length} journal entries`);
  } else {
    expect(r.exitCode, String(r.stderr)).toBe(EXIT[sig]);
    const line = errorLine(String(r.stderr));
    expect(line).toMatch(new RegExp(`interrupted by ${sig}; everything the run had started was undone`));
    expect(String(r.stderr)).not.toMatch(/^\s+at |internal error/m);
    expect(await stillThere(resources, paused.pid)).toEqual([]);
    expect(journalsOf(lab, paused.pid)).toEqual([]);
    expect(await noLeftovers(lab)).toEqual([]);
    seen.push(`exit ${r.exitCode}: ${line.replace(/^domu build: error: /, '')}`);
  }
  // The store's published files are as they were (a SIGKILLed publisher's temp file and lock
  // stay until the next run: checked below, after it).
  expect(published(await snapshot(lab.store))).toEqual(published(storeBefore));
  await outComplete(lab);

  const again = await domuJson(next);
  expect(again.r.exitCode, again.r.stderr).toBe(0);
  for (const s of opts.reusedStages) expect(stageStatus(again.s, s), `${s} reused from the cache:\n${again.r.stderr}`).toBe('cached');
  if (sig === 'SIGKILL') {
    const cleaned = again.r.stderr.split('\n').find((l) => l.includes(`cleaned up after an interrupted run (pid ${paused.pid},`));
    expect(cleaned, again.r.stderr).toBeDefined();
    seen.push(`next run: ${cleaned!.replace(/^domu: warning: /, '').replace(/\(pid \d+, domu build, started [^)]*\)/, '(pid N)').replaceAll(root, '…')}`);
  }
  expect(await stillThere(resources, paused.pid)).toEqual([]);
  expect(await noLeftovers(lab)).toEqual([]);
  await outComplete(lab);
  seen.push(`next run: exit 0, ${opts.reusedStages.length ? `${opts.reusedStages.join('/')} cached` : 'succeeded'}`);
  return seen.join('; ');
}

describe.skipIf(!isRoot)('interruption (needs root: loop devices and mounts)', () => {
  it('SIGKILL while make compiles busybox: make dies with domu; the next run cleans up and compiles', async ({ task }) => {
    const row = reliability(task, {
      area: 'interruption',
      case: 'SIGKILL while `make` compiles busybox (cold cache)',
      expected: 'make and its jobs stop with domu; the next run removes the half-built cache entry, says so, and builds',
    });
    await markCase(lab, 'cold');
    const child = startDomu([...buildArgs(lab), ...publishArgs(lab)]);
    let err = '';
    child.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    // Wait until the compile stage runs make (kconfig's oldconfig runs make too, earlier), then a little more.
    const compiling = async () => /make -j\d+ \(busybox/.test(err) && (await processesIn(lab.cache)).some((p) => / make in .*\/runs\//.test(p));
    for (let i = 0; i < 1800 && !(await compiling()); i++) await sleep(100);
    expect(await compiling(), err).toBe(true);
    await sleep(2000);
    const pid = child.pid!;
    const resources = await journalOf(lab.cache, pid);
    child.kill('SIGKILL');
    const r = await child;
    expect(r.signal).toBe('SIGKILL');
    for (let i = 0; i < 100 && (await processesIn(lab.root)).length; i++) await sleep(100);
    expect(await processesIn(lab.root)).toEqual([]);
    expect(resources.length).toBeGreaterThan(0);

    const again = await domuJson([...buildArgs(lab), ...publishArgs(lab)]);
    expect(again.r.exitCode, again.r.stderr).toBe(0);
    for (const s of ['source', 'extract', 'kconfig']) expect(stageStatus(again.s, s), `${s} reused from the cache:\n${again.r.stderr}`).toBe('cached');
    expect(stageStatus(again.s, 'compile')).toBe('done');
    const cleaned = again.r.stderr.split('\n').find((l) => l.includes(`cleaned up after an interrupted run (pid ${pid},`));
    expect(cleaned, again.r.stderr).toMatch(/released the lock .*\.domu\.lock/);
    expect(await stillThere(resources, pid)).toEqual([]);
    expect(await noLeftovers(lab)).toEqual([]);
    row.observe(`no process left in the lab; next run: ${cleaned!.replace(/^domu: warning: /, '').replace(/\(pid \d+, domu build, started [^)]*\)/, '(pid N)').replaceAll(root, '…')}; exit 0, source/extract/kconfig cached`);
  }, 900_000);

  for (const stage of STAGES) {
    for (const sig of SIGNALS) {
      it(`${sig} at the start of the ${stage} stage`, async ({ task }) => {
        const row = reliability(task, {
          area: 'interruption',
          case: `${sig} at the start of the \`${stage}\` stage of \`domu build --publish\``,
          expected: sig === 'SIGKILL' ? 'nothing partial, store unchanged; the next run cleans up (and says so) and succeeds from the cache' : `exit ${EXIT[sig]}; nothing left behind; store unchanged; the next run succeeds from the cache`,
        });
        await markCase(lab, `${stage}-${sig}`);
        const args = [...buildArgs(lab), ...publishArgs(lab)];
        row.observe(await interruptAndRecover(sig, `stage:${stage}`, args, args, { reusedStages: ['source', 'extract', 'kconfig', 'compile'] }));
      }, 300_000);
    }
  }

  for (const inner of INNER) {
    for (const sig of SIGNALS) {
      it(`${sig} with ${inner.what}`, async ({ task }) => {
        const row = reliability(task, {
          area: 'interruption',
          case: `${sig} with ${inner.what}`,
          expected: 'no mount, loop device, temp file or lock left (after SIGKILL: once the next run cleaned up); store and final paths whole',
        });
        await markCase(lab, `${inner.point}-${sig}`);
        const args = [...buildArgs(lab, inner.extra ?? []), ...publishArgs(lab)];
        row.observe(await interruptAndRecover(sig, inner.point, args, args, { reusedStages: ['source', 'extract', 'kconfig', 'compile'] }));
      }, 300_000);
    }
  }

  for (const point of CACHE_POINTS) {
    for (const sig of SIGNALS) {
      it(`${sig} while a ${point.slice(6)} cache entry is complete under its temp name`, async ({ task }) => {
        const row = reliability(task, {
          area: 'interruption',
          case: `${sig} just before a new \`${point.slice(6)}\` cache entry is renamed into place`,
          expected: 'no half cache entry is ever used; the temp entry is removed; the next run rebuilds it',
        });
        // A cold cache of its own (so the entry is produced) and --until kconfig (no compile).
        const cold = { ...lab, cache: join(root, `cache-${point.slice(6)}-${sig}`) };
        const args = [...buildArgs(cold, ['--until', 'kconfig'])];
        const saved = lab;
        lab = cold;
        try {
          row.observe(await interruptAndRecover(sig, point, args, args, { reusedStages: [] }));
          expect(readdirSync(join(cold.cache, point.slice(6))).filter((n) => !n.startsWith('.')).length).toBeGreaterThanOrEqual(1);
        } finally {
          lab = saved;
        }
      }, 300_000);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Concurrency: runs that share a cache, an output directory or a store.

describe.skipIf(!isRoot)('concurrency', () => {
  const start = (args: string[]) => {
    const child = startDomu(args);
    return child.then((r) => ({ exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }));
  };
  /** build.json names the image that is in out/ (its sha256), and every config is whole. */
  async function outConsistent(out: string): Promise<string> {
    const rec = JSON.parse(readFileSync(join(out, 'build.json'), 'utf8')) as { image: { sha256: string; path: string } };
    const snap = await snapshot(out);
    expect(snap[rec.image.path]).toBe(rec.image.sha256);
    return rec.image.sha256;
  }

  it('two builds with the same cache and --out: one waits for the other, both succeed, out/ is one build', async ({ task }) => {
    const row = reliability(task, {
      area: 'concurrency',
      case: 'two `domu build` at once, same cache, same --out',
      expected: 'one waits for the other (out/.domu.lock); both exit 0; out/ holds one complete build; no temp files',
    });
    await markCase(lab, 'concurrent-same-out');
    const [a, b] = await Promise.all([start(buildArgs(lab)), start(buildArgs(lab))]);
    expect(a.exitCode, a.stderr).toBe(0);
    expect(b.exitCode, b.stderr).toBe(0);
    const waited = [a, b].filter((r) => /waiting for the output directory lock .*\.domu\.lock, held by host \S+ pid \d+/.test(r.stderr));
    expect(waited).toHaveLength(1);
    const sha = await outConsistent(lab.out);
    expect(await noLeftovers(lab)).toEqual([]);
    row.observe(`both exit 0; one said "${/waiting for the output directory lock[^\n]*/.exec(waited[0]!.stderr)![0].replaceAll(root, '…').replace(/pid \d+ \(since [^)]*\)/, 'pid N (since …)').slice(0, 160)}"; build.json matches the image (${sha.slice(0, 12)}…)`);
  }, 600_000);

  it('two builds with one cold cache and different outputs: both produce the same cache entries, the first rename wins', async ({ task }) => {
    const row = reliability(task, {
      area: 'concurrency',
      case: 'two `domu build --until kconfig` at once on one empty cache, different --out',
      expected: 'both exit 0; one entry per cache key, no torn or temp entry',
    });
    const cold = join(root, 'cache-race');
    const args = (out: string) => ['build', '--json', '--config', lab.guest, '--cache-dir', cold, '--source', lab.tarball, '--out', join(root, out), '--until', 'kconfig'];
    const [a, b] = await Promise.all([start(args('race-a')), start(args('race-b'))]);
    expect(a.exitCode, a.stderr).toBe(0);
    expect(b.exitCode, b.stderr).toBe(0);
    const entries: Record<string, number> = {};
    for (const kind of ['sources', 'trees', 'kconfig']) {
      const names = readdirSync(join(cold, kind));
      expect(names.filter((n) => n.startsWith('.tmp-'))).toEqual([]);
      entries[kind] = names.filter((n) => !n.endsWith('.json')).length;
      expect(entries[kind]).toBe(1);
    }
    expect(await tempNames(cold, [join(cold, 'runs')])).toEqual([]);
    // A third run trusts what the two left (all cached).
    const c = await domuJson(args('race-c'));
    expect(c.r.exitCode, c.r.stderr).toBe(0);
    for (const s of ['source', 'extract', 'kconfig']) expect(stageStatus(c.s, s)).toBe('cached');
    row.observe(`both exit 0; entries: ${Object.entries(entries).map(([k, n]) => `${k} ${n}`).join(', ')}; a third run found all three cached`);
  }, 600_000);

  it('two publishing builds with different outputs and one store: the store holds one whole publish', async ({ task }) => {
    const row = reliability(task, {
      area: 'concurrency',
      case: 'two `domu build --publish` at once into one store (different --out)',
      expected: 'the store lock serialises them; both exit 0; the store holds a complete image and configs of one of them',
    });
    await markCase(lab, 'concurrent-publish');
    const other = { ...lab, out: join(root, 'out-other') };
    const [a, b] = await Promise.all([start([...buildArgs(lab), ...publishArgs(lab)]), start([...buildArgs(other), ...publishArgs(other)])]);
    expect(a.exitCode, a.stderr).toBe(0);
    expect(b.exitCode, b.stderr).toBe(0);
    const shaA = await outConsistent(lab.out);
    const shaB = await outConsistent(other.out);
    const store = await snapshot(lab.store);
    expect([shaA, shaB]).toContain(store['busybox.img']);
    expect(await noLeftovers(lab)).toEqual([]);
    expect(await fsckClean(join(lab.store, 'busybox.img'))).toBe(true);
    row.observe(`both exit 0; store image = ${store['busybox.img'] === shaA ? 'first' : 'second'} build's (clean e2fsck); no lock or temp file left`);
  }, 600_000);

  it('a build and `domu configs` on one --out take turns', async ({ task }) => {
    const row = reliability(task, {
      area: 'concurrency',
      case: '`domu build` and `domu configs` at once on one --out',
      expected: 'they take turns; both exit 0; every config in out/ is whole (header hash matches)',
    });
    await markCase(lab, 'build-and-configs');
    const configs = ['configs', '--json', '--config', lab.guest, '--cache-dir', lab.cache, '--out', lab.out];
    const [a, b] = await Promise.all([start(buildArgs(lab)), start(configs)]);
    expect(a.exitCode, a.stderr).toBe(0);
    expect(b.exitCode, b.stderr).toBe(0);
    await outConsistent(lab.out);
    const xen = join(lab.out, 'xen');
    let n = 0;
    for (const host of readdirSync(xen, { withFileTypes: true }).filter((d) => d.isDirectory())) {
      for (const f of readdirSync(join(xen, host.name))) {
        expect(checkHeader(readFileSync(join(xen, host.name, f), 'utf8')).intact, f).toBe(true);
        n++;
      }
    }
    expect(n).toBeGreaterThan(0);
    expect(await noLeftovers(lab)).toEqual([]);
    row.observe(`both exit 0; ${n} configs in out/xen, every header hash matches`);
  }, 600_000);
});
