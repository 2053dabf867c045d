// Interrupting `domu lab` (issue 16): real runs paused at a phase's start — both Dom0s up in QEMU,
// tgtd serving the LUNs, the guest running on test1 — then stopped with SIGINT, SIGTERM or
// SIGKILL. After each: no QEMU of the run, no tgtd it started, nothing listening on its ports (the
// iSCSI portal, the segment), its scratch files gone (SIGKILL: QEMU and tgtd die with domu by the
// parent-death signal; the next domu run removes the files from the journal), --out untouched.
import { existsSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { which } from '../../src/core/exec.js';
import { portHeld } from '../../src/lab/segment.js';
import { isRunning } from '../../src/lab/tgtd.js';
import { TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { domu } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { qemusFor } from '../helpers/qemu-processes.js';
import { buildXenGuest, identities } from '../helpers/xen-guest.js';
import { errorLine, journalOf, startPaused } from './harness.js';
import { reliability } from './reliability.js';

const tools = [['qemu-system-x86_64', 'qemu-system-x86'], ['tgtd', 'tgt']] as const;
const absent: string[] = [];
for (const [t, p] of tools) if (!(await which(t))) absent.push(`${t} (Debian package ${p})`);
const missing = absent.length ? `not found: ${absent.join(', ')}; scripts/setup.sh installs them` : undefined;
if (missing) console.warn(`interrupt-lab: SKIPPING: ${missing}`);

const EXIT = { SIGINT: 130, SIGTERM: 143 } as const;

let dir: string;
let out: string;
let before: Record<string, string>;

beforeAll(async () => {
  dir = await tempDir('domu-faults-lab-');
  out = await buildXenGuest(dir, 'out', ['store.disk=lun']);
  before = await identities(out);
}, 600_000);
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Children of `pid` named `comm` (tgtd runs under setpriv, which execs it: its parent is domu). */
async function childrenNamed(pid: number, comm: string): Promise<number[]> {
  const found: number[] = [];
  for (const p of (await readdir('/proc')).filter((x) => /^\d+$/.test(x))) {
    const stat = await readFile(`/proc/${p}/stat`, 'utf8').catch(() => '');
    const after = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (stat.includes(`(${comm})`) && Number(after[1]) === pid && after[0] !== 'Z') found.push(Number(p));
  }
  return found;
}

/** The ports the paused run holds, from its processes' command lines: tgtd's portal, the QEMUs' segment. */
async function portsOf(tgtd: number, qemus: readonly string[]): Promise<number[]> {
  const cmdline = (await readFile(`/proc/${tgtd}/cmdline`, 'utf8')).split('\0').join(' ');
  const portal = /--iscsi portal=127\.0\.0\.1:(\d+)/.exec(cmdline)?.[1];
  const segment = [...new Set(qemus.map((q) => /stream,id=segment,server=(?:on|off),addr\.type=inet,addr\.host=127\.0\.0\.1,addr\.port=(\d+)/.exec(q)?.[1]))];
  expect(segment, 'both QEMUs name the same segment port').toHaveLength(1);
  return [portal, segment[0]].filter((x): x is string => x !== undefined).map(Number);
}

async function interrupt(sig: 'SIGINT' | 'SIGTERM' | 'SIGKILL', point: string): Promise<{ summary: string; files: string[]; pid: number }> {
  const paused = await startPaused(['lab', '--out', out, '--cache-dir', TEST_CACHE_DIR, '--timeout', '400'], point);
  try {
    return await interruptPaused(paused, sig);
  } finally {
    // A failed expectation before the signal must not leave the paused run (and its QEMUs) behind.
    if (paused.child.exitCode === null && paused.child.signalCode === null) paused.child.kill('SIGKILL');
  }
}

async function interruptPaused(paused: Awaited<ReturnType<typeof startPaused>>, sig: 'SIGINT' | 'SIGTERM' | 'SIGKILL'): Promise<{ summary: string; files: string[]; pid: number }> {
  const resources = await journalOf(TEST_CACHE_DIR, paused.pid);
  const files = resources.filter((r) => r.kind === 'path' && /\/lab\/(store|guest-lun2)\.img$/.test(r.path!)).map((r) => r.path!);
  expect(files, `the LUN backing files are in the run's journal: ${JSON.stringify(resources)}`).toHaveLength(2);
  const runDir = join(files[0]!, '..', '..');
  const qemus = await qemusFor(runDir);
  expect(qemus, 'both dom0s run while paused').toHaveLength(2);
  const tgtds = await childrenNamed(paused.pid, 'tgtd');
  expect(tgtds, 'the run started one tgtd').toHaveLength(1);
  const ports = await portsOf(tgtds[0]!, qemus);
  expect(ports, 'the portal and the segment port').toHaveLength(2);
  const tcp = async () => readFile('/proc/net/tcp', 'utf8');
  for (const p of ports) expect(portHeld(await tcp(), p), `127.0.0.1:${p} is held while paused`).toBe(true);
  paused.child.kill(sig);
  const r = await paused.child;
  for (let i = 0; i < 50 && ((await qemusFor(runDir)).length || tgtds.some(isRunning)); i++) await sleep(100);
  expect(await qemusFor(runDir)).toEqual([]);
  expect(tgtds.filter(isRunning)).toEqual([]);
  for (const p of ports) expect(portHeld(await tcp(), p), `nothing holds 127.0.0.1:${p}`).toBe(false);
  const { ['.domu.lock']: lock, ...rest } = await identities(out);
  expect(rest).toEqual(before);
  if (sig === 'SIGKILL') {
    expect(lock, 'the killed run held the --out lock').toBeDefined();
    expect(r.signal).toBe('SIGKILL');
    return { summary: `killed; both QEMUs and tgtd died with it, ports ${ports.join(' and ')} free`, files, pid: paused.pid };
  }
  expect(r.exitCode, String(r.stderr)).toBe(EXIT[sig]);
  const line = errorLine(String(r.stderr));
  expect(line).toMatch(new RegExp(`interrupted by ${sig}; everything the run had started was undone`));
  expect(String(r.stderr)).not.toMatch(/^\s+at |internal error/m);
  for (const f of files) expect(existsSync(f), `${f} removed`).toBe(false);
  return { summary: `exit ${r.exitCode}; both QEMUs, tgtd and the LUN files gone; ports ${ports.join(' and ')} free`, files, pid: paused.pid };
}

describe.skipIf(missing)('interrupting domu lab', () => {
  it('SIGINT with the guest running on test1 (before xl migrate): exit 130, no QEMU, no tgtd, no port, no LUN file; --out untouched', async ({ task }) => {
    const row = reliability(task, { area: 'interruption', case: 'SIGINT during `domu lab`, guest on test1, before the migration', expected: 'exit 130; no QEMU, tgtd or listening port; LUN files removed; --out untouched' });
    row.observe((await interrupt('SIGINT', 'stage:migrate')).summary);
  }, 900_000);

  it('SIGTERM with both dom0s up (before xl create): exit 143, nothing left', async ({ task }) => {
    const row = reliability(task, { area: 'interruption', case: 'SIGTERM during `domu lab`, both dom0s up', expected: 'exit 143; no QEMU, tgtd or listening port; LUN files removed; --out untouched' });
    row.observe((await interrupt('SIGTERM', 'stage:create')).summary);
  }, 900_000);

  it('SIGKILL with both dom0s up: QEMU and tgtd die with domu; the next run removes its LUN files', async ({ task }) => {
    const row = reliability(task, { area: 'interruption', case: 'SIGKILL during `domu lab`, both dom0s up', expected: 'QEMU and tgtd die with domu, ports free; the next domu run removes the LUN files' });
    const k = await interrupt('SIGKILL', 'stage:create');
    // Any pipeline run on the same cache undoes the dead run's journal.
    const next = await domu(['configs', '--out', join(dir, 'next'), '--cache-dir', TEST_CACHE_DIR]);
    expect(next.exitCode, next.stderr).toBe(0);
    expect(next.stderr).toContain(`cleaned up after an interrupted run (pid ${k.pid},`);
    for (const f of k.files) expect(existsSync(f), `${f} removed by the next run`).toBe(false);
    row.observe(`${k.summary}; the next run removed ${k.files.length} LUN files`);
  }, 900_000);
});
