// Interrupting `domu verify` on real Xen (issue 15): real runs paused at a phase's start (dom0 up
// in QEMU, then the guest running inside it), stopped with SIGINT, SIGTERM or SIGKILL. After each:
// no QEMU of the run (SIGKILL: it dies with domu, parent-death signal), its scratch store image
// gone (SIGKILL: removed by the next run from the journal), --out untouched. Then the next run,
// the default PVH guest, passes every check: modules loaded, address, pings, the file on its
// disk, and a live migration after which it is the same guest.
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { which } from '../../src/core/exec.js';
import { TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { domuJson, stage } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { qemusFor } from '../helpers/qemu-processes.js';
import { buildXenGuest, identities, XEN_TEST_TIMEOUT } from '../helpers/xen-guest.js';
import { errorLine, journalOf, startPaused } from './harness.js';
import { reliability } from './reliability.js';

const missing = (await which('qemu-system-x86_64')) ? undefined : 'qemu-system-x86_64 not found on PATH (apt-get install qemu-system-x86; scripts/setup.sh does it)';
if (missing) console.warn(`interrupt-xen: SKIPPING: ${missing}`);

const EXIT = { SIGINT: 130, SIGTERM: 143 } as const;

let dir: string;
let out: string;
let before: Record<string, string>;
/** Scratch store images of SIGKILLed runs, which the next run must remove. */
const killedStores: string[] = [];
const killedPids: number[] = [];

beforeAll(async () => {
  dir = await tempDir('domu-faults-xen-');
  out = await buildXenGuest(dir, 'out');
  before = await identities(out);
}, 600_000);
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const verifyArgs = () => ['verify', '--json', '--out', out, '--cache-dir', TEST_CACHE_DIR, ...XEN_TEST_TIMEOUT];

/** Stop a verify paused at `point` with `sig`; what it left is checked here. */
async function interrupt(sig: 'SIGINT' | 'SIGTERM' | 'SIGKILL', point: string): Promise<string> {
  const paused = await startPaused(verifyArgs(), point);
  const resources = await journalOf(TEST_CACHE_DIR, paused.pid);
  const store = resources.find((r) => r.kind === 'path' && r.path!.endsWith('/verify-xen/store.img'))?.path;
  expect(store, `the scratch store is in the run's journal: ${JSON.stringify(resources)}`).toBeDefined();
  const runDir = dirname(dirname(store!));
  expect(await qemusFor(runDir), 'QEMU runs while paused').toHaveLength(1);
  paused.child.kill(sig);
  const r = await paused.child;
  // QEMU dies with domu (SIGKILL: the parent-death signal; otherwise the cleanup registry).
  for (let i = 0; i < 50 && (await qemusFor(runDir)).length; i++) await sleep(100);
  expect(await qemusFor(runDir)).toEqual([]);
  if (sig === 'SIGKILL') {
    // The killed run's --out lock stays (its holder is dead) until the next run takes it over.
    const { ['.domu.lock']: lock, ...rest } = await identities(out);
    expect(lock, 'the killed run held the --out lock').toBeDefined();
    expect(rest).toEqual(before);
    expect(r.signal).toBe('SIGKILL');
    killedStores.push(store!);
    killedPids.push(paused.pid);
    return `killed; QEMU gone with it; ${existsSync(store!) ? 'its scratch store left for the next run' : 'no scratch store left'}`;
  }
  expect(await identities(out)).toEqual(before);
  expect(r.exitCode, String(r.stderr)).toBe(EXIT[sig]);
  const line = errorLine(String(r.stderr));
  expect(line).toMatch(new RegExp(`interrupted by ${sig}; everything the run had started was undone`));
  expect(String(r.stderr)).not.toMatch(/^\s+at |internal error/m);
  expect(existsSync(store!), `${store} removed`).toBe(false);
  return `exit ${r.exitCode}: ${line.replace(/^domu verify: error: /, '')}; QEMU and the scratch store gone`;
}

describe.skipIf(missing)('interrupting domu verify on real Xen', () => {
  it('SIGINT while dom0 is up (before xl create): exit 130, QEMU and the scratch store gone, --out untouched', async ({ task }) => {
    const row = reliability(task, { area: 'interruption', case: 'SIGINT during `domu verify` on Xen, dom0 up in QEMU', expected: 'exit 130; no QEMU; scratch store removed; --out untouched' });
    row.observe(await interrupt('SIGINT', 'stage:guest'));
  }, 600_000);

  it('SIGTERM while the guest runs inside the nested Xen: exit 143, nothing left', async ({ task }) => {
    const row = reliability(task, { area: 'interruption', case: 'SIGTERM during `domu verify` on Xen, the guest running', expected: 'exit 143; no QEMU; scratch store removed; --out untouched' });
    row.observe(await interrupt('SIGTERM', 'stage:move'));
  }, 600_000);

  it('SIGKILL while the guest runs: QEMU dies with domu; the next run cleans up and passes every check, live migration included', async ({ task }) => {
    const row = reliability(task, {
      area: 'interruption',
      case: 'SIGKILL during `domu verify` on Xen, the guest running',
      expected: 'QEMU dies with domu; the next run removes the scratch store and passes every check (PVH, live migration)',
    });
    row.observe(await interrupt('SIGKILL', 'stage:move'));
    const { r, s } = await domuJson(verifyArgs());
    expect(r.exitCode, r.stderr).toBe(0);
    for (const [i, pid] of killedPids.entries()) {
      expect(r.stderr).toContain(`cleaned up after an interrupted run (pid ${pid},`);
      expect(existsSync(killedStores[i]!), `${killedStores[i]} removed by the next run`).toBe(false);
    }
    const checks = (['guest', 'checks', 'move', 'disk'] as const).flatMap((n) => (stage(s, n).outputs as { checks: { name: string; ok: boolean; detail: string }[] }).checks);
    expect(checks.filter((c) => !c.ok)).toEqual([]);
    const names = checks.map((c) => c.name);
    for (const n of ['modules loaded', 'address', 'ping dom0 → guest', 'ping guest → dom0', 'file written', 'live migration', 'same guest after the move', 'file after the move', 'ping guest → dom0 after the move', 'file on the guest disk']) expect(names).toContain(n);
    const move = stage(s, 'move').outputs as { kind: string; seconds: number; pauseSeconds: number; domainIds: [string, string] };
    expect(move.kind).toBe('migrate');
    expect(move.domainIds[1]).not.toBe(move.domainIds[0]);
    expect(move.pauseSeconds).toBeGreaterThan(0);
    expect(checks.find((c) => c.name === 'address')!.detail).toMatch(/172\.16\.31\.4\/16/);
    expect(await identities(out)).toEqual(before);
    expect(await qemusFor(dirname(s.log))).toEqual([]);
    row.observe(`next run: exit 0, ${checks.length} checks passed, migrated in ${move.seconds} s (pause ${move.pauseSeconds} s)`);
  }, 900_000);
});
