// The verify stage: boot the built image under QEMU with the build's kernel and ramdisk, the
// image's own init (inittab, rcS), wait for rcS's ready marker, then check the guest through its
// serial console: busybox's applet count and every module of the guest's /etc/modules.
//
// The console conversation: rcS prints `domu-guest-ready` as its last line; init then starts the
// inittab's askfirst shell on the console ("Please press Enter to activate this console."). We
// press Enter and type `stty -echo` with empty prompts, so that the console carries only what
// the commands print; every line we look for carries a tag computed by the guest's shell
// ($((6*7))), so that the typed text itself (echoed before stty ran) can never match. Nothing
// in the image is changed for this: it is the console an administrator gets.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { abortError, DomuError } from '../core/errors.js';
import { chooseAccel, GuestWaitError, QemuGuest, type Accel } from '../xen/qemu.js';
import type { StageContext } from '../core/context.js';
import { answers, judgeModules, MODULE_CHECK_LINES, moduleReport, type ModuleReport, type ModuleVerdict } from './verify-checks.js';

export type { ModuleVerdict, ModuleVerdictKind } from './verify-checks.js';

export const READY_MARKER = 'domu-guest-ready';
/** Console lines shown when the boot fails. */
export const TAIL_LINES = 30;
/** Time for the shell checks once the marker is there (each is a few commands). */
const CHECK_S = 60;
const TAG = 'DOMU-VERIFY-42';

export interface VerifyInput {
  image: string;
  kernel: { path: string; sha256: string };
  ramdisk: string | undefined;
  memoryMiB: number;
  /** ro or rw, as the guest's root= option says. */
  rootMode: 'ro' | 'rw';
  /** busybox --list count of the build (null: not recorded). */
  applets: number | null;
  /** The kernel release the build resolved. */
  release: string | null;
  /** Module names of the build (build.json), compared with the guest's /etc/modules. */
  modules: string[];
  /** Seconds from QEMU's start to the marker. */
  timeoutS: number;
  /** Probe the accelerator again instead of using the cached verdict. */
  freshProbe?: boolean;
}

export interface VerifyOutput {
  ok: true;
  accel: Accel;
  accelReason: string;
  /** From QEMU's start to the marker on the console. */
  secondsToMarker: number;
  /** The whole check, QEMU start to exit. */
  seconds: number;
  applets: { found: number; expected: number | null };
  release: { guest: string; expected: string | null };
  modules: ModuleVerdict[];
  kernelCommandLine: string;
  consoleLog: string;
}

/** The lines typed after the ready probe: every result line is `<TAG> <kind> <data>`. */
const CHECK_SCRIPT = ['echo "$P applets $(busybox --list | wc -l)"', 'echo "$P release $(uname -r)"', ...MODULE_CHECK_LINES, 'echo "$P end"'];

export async function verifyStage(input: VerifyInput, ctx: StageContext): Promise<VerifyOutput> {
  const dir = join(ctx.workDir, 'verify');
  await mkdir(dir, { recursive: true });
  const consoleLog = join(dir, 'console.log');
  const { accel, reason: accelReason } = await chooseAccel(ctx, input.kernel, input.freshProbe ?? false);
  ctx.log.info(`booting ${input.image} under QEMU (${accel}: ${accelReason}); console: ${consoleLog}`);
  // The image's own init (not the description's init=/bin/sh): inittab and rcS are what is checked.
  // panic=-1 with -no-reboot: a kernel panic ends QEMU at once.
  const append = `console=ttyS0 root=/dev/vda ${input.rootMode} init=/sbin/init panic=-1 quiet`;
  const guest = await QemuGuest.start(ctx, { accel, kernel: input.kernel.path, initrd: input.ramdisk, append, memoryMiB: input.memoryMiB, disks: [input.image], logFile: consoleLog });
  ctx.log.debug(`QEMU pid ${guest.pid}`);
  const failure = (what: string, e: unknown, limit: string) => {
    if (ctx.signal.aborted) return abortError(ctx.signal);
    const why = e instanceof GuestWaitError && e.reason === 'timeout' ? `${e.message} (${limit})` : e instanceof Error ? e.message : String(e);
    const shown = guest.panicLine ? `the last ${TAIL_LINES} console lines up to the panic (its dump is in the log)` : `the last ${TAIL_LINES} console lines`;
    return new DomuError(`${what}: ${why}\n${shown}:\n${guest.tail(TAIL_LINES) || '(nothing on the console)'}`, {
      hint: `the whole console is in ${consoleLog}`,
    });
  };
  try {
    let pos: number;
    try {
      pos = (await guest.waitFor(new RegExp(`^${READY_MARKER}$`, 'm'), `the ready marker ${READY_MARKER}`, guest.startedAt + input.timeoutS * 1000)).end;
    } catch (e) {
      throw failure('the guest did not boot', e, `--timeout ${input.timeoutS}`);
    }
    const secondsToMarker = (performance.now() - guest.startedAt) / 1000;
    ctx.log.info(`${READY_MARKER} after ${secondsToMarker.toFixed(1)} s`);
    const report = await converse(guest, pos, performance.now() + CHECK_S * 1000).catch((e: unknown) => {
      throw failure(`the guest reached ${READY_MARKER}, but its console shell did not answer`, e, `${CHECK_S} s for the checks`);
    });
    guest.send('poweroff -f\n'); // -snapshot: nothing to flush; the image is never written
    await guest.stopWithin(5000);
    const { notes, ...out } = judge(input, report);
    const problems = [...notes, ...problemsOf(out)];
    if (problems.length) {
      throw new DomuError(`the guest booted, but: ${problems.join('; ')}`, { hint: `the whole console is in ${consoleLog}` });
    }
    return { ok: true, accel, accelReason, secondsToMarker: round(secondsToMarker), seconds: round((performance.now() - guest.startedAt) / 1000), ...out, kernelCommandLine: append, consoleLog };
  } finally {
    await guest.stop();
  }
}

interface GuestReport extends ModuleReport {
  applets: number;
  release: string;
}

/** Activate the console shell, run the checks, parse the tagged lines. */
async function converse(guest: QemuGuest, from: number, deadline: number): Promise<GuestReport> {
  // Enter for askfirst ("Please press Enter to activate this console"), then the first command.
  // What is typed before the shell runs waits in the tty's buffer; typed again every 10 s in
  // case it went to a program that was reading the console before (an empty line is harmless).
  let ready: { end: number } | undefined;
  while (!ready) {
    guest.send(`\nstty -echo; PS1=; PS2=; P=DOMU-VERIFY-$((6*7)); echo "$P ready"\n`);
    const attempt = Math.min(deadline, performance.now() + 10_000);
    ready = await guest.waitFor(new RegExp(`${TAG} ready$`, 'm'), 'the console shell', attempt, from).catch((e: unknown) => {
      if (e instanceof GuestWaitError && e.reason === 'timeout' && attempt < deadline) return undefined;
      throw e;
    });
  }
  guest.send(`${CHECK_SCRIPT.join('\n')}\n`);
  const end = await guest.waitFor(new RegExp(`${TAG} end$`, 'm'), 'the results of the checks', deadline, ready.end);
  const list = answers(guest.console.slice(ready.end, end.end), TAG);
  const report: GuestReport = { ...moduleReport(list), applets: -1, release: '' };
  for (const { kind, words } of list) {
    if (kind === 'applets') report.applets = Number(words[0]);
    else if (kind === 'release') report.release = words[0] ?? '';
  }
  return report;
}

type Judged = Pick<VerifyOutput, 'applets' | 'release' | 'modules'> & { notes: string[] };

function judge(input: VerifyInput, r: GuestReport): Judged {
  const { modules, notes } = judgeModules(input.modules, r, false);
  return { applets: { found: r.applets, expected: input.applets }, release: { guest: r.release, expected: input.release }, modules, notes };
}

function problemsOf(j: Omit<Judged, 'notes'>): string[] {
  const p: string[] = [];
  if (!(j.applets.found > 0)) p.push('busybox --list printed no applets');
  else if (j.applets.expected !== null && j.applets.found !== j.applets.expected) p.push(`busybox --list shows ${j.applets.found} applets, the build recorded ${j.applets.expected}`);
  if (j.release.expected !== null && j.release.guest !== j.release.expected) p.push(`the guest runs kernel ${j.release.guest || '(unknown)'}, the build is for ${j.release.expected}`);
  for (const m of j.modules) if (m.verdict === 'failed') p.push(`module ${m.name}: ${m.detail}`);
  return p;
}

const round = (s: number) => Math.round(s * 100) / 100;

/** The one-line summary of a passed check. */
export function verifyNote(o: VerifyOutput): string {
  const mods = o.modules.map((m) => `${m.name} ${m.verdict === 'no-device' ? 'refused: no device (as outside Xen)' : m.verdict}`);
  return `${READY_MARKER} after ${o.secondsToMarker.toFixed(1)} s (${o.accel}); ${o.applets.found} applets${o.applets.expected === null ? '' : ` of ${o.applets.expected}`}; ${mods.join(', ') || 'no modules'}`;
}
