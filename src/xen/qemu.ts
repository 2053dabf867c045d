// A Linux guest under QEMU with its serial console as a conversation: start it, wait for text on
// the console, type into it, stop it. Argument arrays only (execa, no shell). The QEMU process
// never outlives the run: it is registered with the cleanup registry (SIGKILL by pid), killed
// when the run aborts (SIGINT/SIGTERM), killed by pid on a time-out, and started under
// `setpriv --pdeathsig KILL` where setpriv exists, so that even a SIGKILLed domu takes it along.
// Also: which accelerator to use (KVM only when a real kernel boots under it here; TCG otherwise).
import { constants, createWriteStream, type WriteStream } from 'node:fs';
import { access, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { release as hostRelease } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import type { Cache } from '../core/cache.js';
import type { CleanupRegistry } from '../core/cleanup.js';
import { abortError, DomuError } from '../core/errors.js';
import { commandLine, dyingWithUs, run, which, type ExecEnv } from '../core/exec.js';
import { hashValue } from '../core/hash.js';

export const QEMU = 'qemu-system-x86_64';
export type Accel = 'tcg' | 'kvm';

/** The kernel's own last words; QEMU exits soon after when the command line has panic=-1. */
export const KERNEL_PANIC = /Kernel panic - not syncing/;

export interface QemuEnv extends ExecEnv {
  cleanup: Pick<CleanupRegistry, 'push'>;
}

export interface QemuSpec {
  accel: Accel;
  kernel: string;
  /**
   * The -initrd value as QEMU reads it. For a Linux kernel, a file; for a multiboot kernel (Xen),
   * modules separated by commas, each `<file> <args>` with commas inside doubled (multibootModules).
   */
  initrd?: string | undefined;
  /** The kernel command line; give it console=ttyS0 to get the console on stdio. */
  append: string;
  memoryMiB: number;
  /** Raw disk images, virtio disks in this order (vda, vdb, …). Under -snapshot (never written) unless `writable`. */
  disks: string[];
  /** Write the disks for real (no -snapshot): the caller owns them. */
  writable?: boolean;
  /** The CPU model under TCG (e.g. `qemu64,+svm,+npt` for a nested Xen); QEMU's default otherwise. */
  cpu?: string | undefined;
  /** The whole console (bytes as they came) is written here as it arrives. */
  logFile: string;
  /** More QEMU options (devices), placed before -snapshot. */
  extraArgs?: string[];
}

/** QEMU's command line for `spec` (without the setpriv wrapper). */
export function qemuArgs(spec: QemuSpec): string[] {
  // A comma inside a -drive option value is written as two commas.
  const drives = spec.disks.flatMap((d) => ['-drive', `file=${d.replace(/,/g, ',,')},format=raw,if=virtio`]);
  return [
    ...['-accel', spec.accel, ...(spec.accel === 'kvm' ? ['-cpu', 'host'] : spec.cpu ? ['-cpu', spec.cpu] : [])],
    ...['-nodefaults', '-no-user-config', '-display', 'none', '-monitor', 'none', '-serial', 'stdio'],
    ...['-no-reboot', '-m', String(spec.memoryMiB), '-smp', '1'],
    ...['-kernel', spec.kernel, ...(spec.initrd ? ['-initrd', spec.initrd] : []), '-append', spec.append],
    ...drives,
    ...(spec.extraArgs ?? []),
    ...(spec.writable ? [] : ['-snapshot']),
  ];
}

/**
 * The -initrd value for a multiboot kernel: one module per item, `<file> <args>`. QEMU splits the
 * value at single commas, so every comma inside a file name or an argument is doubled (facts.md:
 * one comma in `dom0_mem=768M,max:768M` made QEMU open a file named after the rest).
 */
export function multibootModules(modules: readonly { file: string; args?: string }[]): string {
  return modules
    .map((m) => {
      if (/\s/.test(m.file)) throw new DomuError(`multiboot module ${JSON.stringify(m.file)}: a file name with white space cannot be passed to QEMU (it ends the name)`, { hint: 'use a work directory without spaces' });
      return [m.file, ...(m.args ? [m.args] : [])].join(' ').replace(/,/g, ',,');
    })
    .join(',');
}

export type WaitFailure = 'timeout' | 'exited' | 'panic';

export class GuestWaitError extends DomuError {
  constructor(
    message: string,
    readonly reason: WaitFailure,
  ) {
    super(message);
    this.name = 'GuestWaitError';
  }
}

interface Waiter {
  re: RegExp;
  from: number;
  what: string;
  resolve: (m: { match: RegExpExecArray; end: number }) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class QemuGuest {
  private text = '';
  private waiters: Waiter[] = [];
  private exitedWith: string | undefined;
  /** Where in the console the kernel's panic line starts (undefined: no panic). */
  private panicAt: number | undefined;
  private readonly log: WriteStream;
  private stderr = '';
  private releaseCleanup: () => void;
  /** Settles when QEMU has exited (never rejects). */
  readonly exited: Promise<void>;
  readonly pid: number;
  readonly startedAt = performance.now();

  private constructor(
    private readonly env: QemuEnv,
    readonly spec: QemuSpec,
    private readonly child: ReturnType<typeof spawnQemu>,
  ) {
    this.pid = child.pid!;
    this.log = createWriteStream(spec.logFile, { flags: 'a' });
    this.log.on('error', (e) => env.log.warn(`cannot write the console log ${spec.logFile}: ${e.message}`));
    child.stdout!.on('data', (c: Buffer) => this.onData(c));
    child.stderr!.on('data', (c: Buffer) => {
      this.stderr += c.toString('utf8');
      this.log.write(c);
    });
    child.stdin!.on('error', () => undefined); // typing into a guest that just died: EPIPE is not ours to report
    this.releaseCleanup = env.cleanup.push(`kill QEMU (pid ${this.pid})`, () => this.stop());
    this.exited = child
      .then(
        (r) => this.onExit(r.isCanceled ? 'was stopped (run aborted)' : r.signal ? `was killed by ${r.signal}` : `exited with code ${r.exitCode ?? '?'}`),
        (e: unknown) => this.onExit(`failed: ${String(e)}`),
      )
      .then(() => new Promise<void>((res) => this.log.end(res))); // the log is complete once exited settles
  }

  /** Start QEMU; the console starts filling at once. */
  static async start(env: QemuEnv, spec: QemuSpec): Promise<QemuGuest> {
    if (env.signal.aborted) throw abortError(env.signal);
    if (!(await which(QEMU))) throw new DomuError(`program not found: ${QEMU}`, { hint: 'install qemu-system-x86 (scripts/setup.sh, or `domu doctor`)' });
    await mkdir(dirname(spec.logFile), { recursive: true });
    const [file, args] = dyingWithUs(QEMU, qemuArgs(spec));
    env.log.debug(`$ ${commandLine(file, args)}`);
    const child = spawnQemu(env, file, args);
    if (child.pid === undefined) {
      await child.catch(() => undefined);
      throw new DomuError(`could not start ${QEMU}`);
    }
    return new QemuGuest(env, spec, child);
  }

  /** The console so far, without carriage returns. */
  get console(): string {
    return this.text;
  }

  get running(): boolean {
    // exitCode/signalCode: Node has reaped it (the pid may be reused), even before `exited` settles.
    return this.exitedWith === undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The kernel's panic line ("Kernel panic - not syncing: …"), when it panicked. */
  get panicLine(): string | undefined {
    if (this.panicAt === undefined) return undefined;
    const end = this.text.indexOf('\n', this.panicAt);
    return this.text.slice(this.panicAt, end < 0 ? undefined : end).replace(/^\[\s*[\d.]+\]\s*/, '').trim();
  }

  /**
   * The last `n` non-empty console lines; after a panic, the `n` lines up to the panic line
   * (what led to it), not the register and stack dump that follows it.
   */
  tail(n: number): string {
    let text = this.text;
    if (this.panicAt !== undefined) {
      const end = text.indexOf('\n', this.panicAt);
      text = text.slice(0, end < 0 ? undefined : end);
    }
    return text.split('\n').map((l) => l.trimEnd()).filter(Boolean).slice(-n).join('\n');
  }

  /** Type `text` on the console. */
  send(text: string): void {
    if (this.running) this.child.stdin!.write(text);
  }

  /**
   * Wait until `re` matches the console text after offset `from`; resolves with the match and
   * the offset just after it. Rejects (GuestWaitError) when `deadline` (a performance.now()
   * time) passes, QEMU exits, the kernel panics, or the run is aborted.
   */
  waitFor(re: RegExp, what: string, deadline: number, from = 0): Promise<{ match: RegExpExecArray; end: number }> {
    return new Promise((resolve, reject) => {
      const ms = Math.max(0, deadline - performance.now());
      const waiter: Waiter = {
        re: new RegExp(re.source, re.flags.replace('g', '')),
        from,
        what,
        resolve,
        reject,
        timer: setTimeout(() => this.settle(waiter, undefined, new GuestWaitError(`timed out after ${seconds(ms)} s waiting for ${what}`, 'timeout')), ms),
      };
      this.waiters.push(waiter);
      this.poll();
      if (this.exitedWith !== undefined) this.settle(waiter, undefined, this.exitError(waiter));
    });
  }

  /** Kill QEMU (SIGKILL to its pid) unless it has exited, and wait for it. Harmless when it has. */
  async stop(): Promise<void> {
    if (this.running) this.child.kill('SIGKILL');
    await this.exited;
  }

  /** Wait up to `ms` for QEMU to exit by itself (e.g. after poweroff); then kill it. */
  async stopWithin(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.exited, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
    await this.stop();
  }

  /** What QEMU itself said on stderr (bad options, missing files), last lines. */
  get qemuErrors(): string {
    const lines = this.stderr.split('\n').map((l) => l.trim().replace(/^qemu-system-\w+: /, ''));
    return lines.filter((l) => l && !/^warning: host doesn't support requested feature/.test(l)).slice(0, 2).join(' | ');
  }

  private onData(chunk: Buffer): void {
    this.log.write(chunk);
    this.text += chunk.toString('latin1').replace(/\r/g, '');
    const recent = Math.max(0, this.text.length - chunk.length - 64);
    const panic = this.panicAt === undefined ? KERNEL_PANIC.exec(this.text.slice(recent)) : null;
    if (panic) {
      this.panicAt = this.text.lastIndexOf('\n', recent + panic.index) + 1;
      // The panic text goes on for a moment (and QEMU exits with panic=-1): give it 2 s.
      setTimeout(() => {
        for (const w of [...this.waiters]) this.settle(w, undefined, this.panicError(w));
      }, 2000).unref();
    }
    this.poll();
  }

  private onExit(how: string): void {
    this.exitedWith = how;
    this.releaseCleanup();
    for (const w of [...this.waiters]) this.settle(w, undefined, this.exitError(w));
  }

  /** Why `w` can no longer be satisfied once QEMU has exited. */
  private exitError(w: Waiter): Error {
    if (this.panicAt !== undefined) return this.panicError(w);
    if (this.env.signal.aborted) return abortError(this.env.signal);
    return new GuestWaitError(`QEMU ${this.exitedWith}${this.qemuErrors ? ` (${this.qemuErrors})` : ''} before ${w.what}`, 'exited');
  }

  private panicError(w: Waiter): GuestWaitError {
    return new GuestWaitError(`the guest kernel panicked (${this.panicLine}) before ${w.what}`, 'panic');
  }

  private poll(): void {
    for (const w of [...this.waiters]) {
      const m = w.re.exec(this.text.slice(w.from));
      if (m) this.settle(w, { match: m, end: w.from + m.index + m[0].length });
    }
  }

  private settle(w: Waiter, ok: { match: RegExpExecArray; end: number } | undefined, err?: Error): void {
    const i = this.waiters.indexOf(w);
    if (i < 0) return;
    this.waiters.splice(i, 1);
    clearTimeout(w.timer);
    if (ok) w.resolve(ok);
    else w.reject(err!);
  }
}

const seconds = (ms: number) => (ms < 10_000 ? (ms / 1000).toFixed(1) : String(Math.round(ms / 1000)));

function spawnQemu(env: ExecEnv, file: string, args: string[]) {
  return execa(file, args, {
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: false,
    reject: false,
    cancelSignal: env.signal,
    forceKillAfterDelay: 2000,
  });
}

export interface AccelChoice {
  accel: Accel;
  /** Why, in a few words (shown in the summary). */
  reason: string;
}

export interface AccelEnv extends QemuEnv {
  cache: Cache;
  workDir: string;
}

const PROBE_KIND = 'accel-probes';
/** A working KVM boots this kernel to its root-mount panic in a second or two; TCG in ~5 s. */
const PROBE_S = 15;

/**
 * KVM when it really works, else TCG. /dev/kvm being there proves little (a nested host may
 * hang or abort in KVM_RUN): the probe boots `kernel` under KVM without root file system and
 * expects its "VFS: Unable to mount root" panic within 15 s. The verdict is cached per QEMU
 * version, host kernel and guest kernel; `fresh` probes again.
 */
export async function chooseAccel(env: AccelEnv, kernel: { path: string; sha256: string }, fresh = false): Promise<AccelChoice> {
  if (!(await access('/dev/kvm', constants.R_OK | constants.W_OK).then(() => true, () => false))) return { accel: 'tcg', reason: 'no usable /dev/kvm' };
  const version = (await run(env, QEMU, ['--version'], { missingHint: 'install qemu-system-x86 (scripts/setup.sh)' })).stdout.split('\n')[0] ?? '';
  const key = hashValue({ v: 1, qemu: version, host: hostRelease(), kernel: kernel.sha256, kvm: (await stat('/dev/kvm')).rdev });
  const cached = fresh ? undefined : await env.cache.lookup(PROBE_KIND, key);
  if (cached) {
    const verdict = JSON.parse(await readFile(join(cached, 'verdict.json'), 'utf8')) as AccelChoice;
    return { ...verdict, reason: `${verdict.reason} (cached probe)` };
  }
  const verdict = await probeKvm(env, kernel.path);
  env.log.info(`KVM probe: ${verdict.accel === 'kvm' ? 'works' : 'not usable'} (${verdict.reason})`);
  if (!env.signal.aborted) {
    if (fresh) await env.cache.remove(PROBE_KIND, key);
    await env.cache.store(PROBE_KIND, key, (dir) => writeFile(join(dir, 'verdict.json'), `${JSON.stringify(verdict)}\n`));
  }
  return verdict;
}

async function probeKvm(env: AccelEnv, kernel: string): Promise<AccelChoice> {
  const guest = await QemuGuest.start(env, {
    accel: 'kvm',
    kernel,
    append: 'console=ttyS0 earlyprintk=ttyS0 panic=-1',
    memoryMiB: 256,
    disks: [],
    logFile: join(env.workDir, 'verify', 'kvm-probe.log'),
  });
  try {
    await guest.waitFor(/VFS: Unable to mount root/, 'the probe kernel', guest.startedAt + PROBE_S * 1000);
    return { accel: 'kvm', reason: `KVM probe booted the kernel in ${((performance.now() - guest.startedAt) / 1000).toFixed(1)} s` };
  } catch (e) {
    if (env.signal.aborted) throw abortError(env.signal);
    const r = (e as GuestWaitError).reason;
    const why = r === 'timeout' ? `the probe kernel hung under KVM (no output in ${PROBE_S} s)` : r === 'exited' ? `QEMU failed under KVM${guest.qemuErrors ? `: ${guest.qemuErrors}` : ''}` : (e as Error).message;
    return { accel: 'tcg', reason: why };
  } finally {
    await guest.stop();
  }
}
