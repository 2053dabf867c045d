// A private tgtd (Debian's package tgt): the lab's iSCSI storage server as a child of domu.
//
// Private, so that it never meets the system's tgtd (/var/run/tgtd, port 3260, /etc/tgt, systemd):
// - it listens only on 127.0.0.1:<a free port> (`--iscsi portal=127.0.0.1:PORT`);
// - tgtd and tgtadm (and so tgt-admin, which runs tgtadm) put the management socket at
//   `$TGT_IPC_SOCKET.<control port>` (lock file: `….lock`): we point that into a state directory
//   of this tgtd's own. tgtadm only serves root, so starting refuses any other user.
//
// Never leaving a tgtd behind. tgtd ignores SIGTERM and SIGINT (it waits for
// `tgtadm --op delete --mode system`, which it refuses while targets exist), so everything here
// is SIGKILL, by pid:
// 1. stop() SIGKILLs the pid, waits for the exit, checks the process is gone, removes the state
//    directory;
// 2. the run's cleanup registry holds stop() (an interrupted run, SIGINT/SIGTERM, undoes it) and
//    its journal holds the state directory (after a SIGKILLed run the next run removes it);
//    execa's own cleanup and cancelSignal kill it too, with SIGKILL;
// 3. a process 'exit' hook SIGKILLs every tgtd still running when domu exits without stop();
// 4. tgtd runs under `setpriv --pdeathsig KILL` (dyingWithUs), so the kernel kills it when domu
//    dies in a way no hook sees (SIGKILL, a crash).
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import type { CleanupRegistry } from '../core/cleanup.js';
import { abortError, DomuError } from '../core/errors.js';
import { commandLine, dyingWithUs, run, which, type ExecEnv, type ExecResult } from '../core/exec.js';
import { parseTgtadmShow, type TgtTarget } from './tgtadm-show.js';

export const TGT_HOST = '127.0.0.1';
const TGT_HINT = 'install the Debian package tgt (scripts/setup.sh, or `domu doctor`)';
/** How long tgtd may take to answer tgtadm after the start (a bound, not an expectation). */
const START_TIMEOUT_MS = 20_000;
const COMMAND_TIMEOUT_MS = 60_000;
/** sun_path is 108 bytes with its NUL; tgtd appends `.<control port>.lock` to TGT_IPC_SOCKET. */
const MAX_SOCKET_PATH = 107;
// tgt-admin and tgtadm live in /usr/sbin, which a non-login root shell may not have on PATH.
const PATH_WITH_SBIN = [...new Set([...(process.env.PATH ?? '').split(':').filter(Boolean), '/usr/sbin', '/sbin', '/usr/bin', '/bin'])].join(':');

export interface TgtdEnv extends ExecEnv {
  cleanup: Pick<CleanupRegistry, 'push'>;
}

export interface TgtdOptions {
  /** The iSCSI port on 127.0.0.1; default a free one (another is tried if it was taken meanwhile). */
  port?: number | undefined;
  /** tgtd's `-C` (1–32767, tgtd's limit); default a random one. */
  controlPort?: number | undefined;
  /**
   * The directory for the management socket: created, and removed by stop(), so give one of its
   * own (an existing one must be empty). Default: a new temp directory.
   */
  stateDir?: string | undefined;
  /** Default true; false only to test the exit hook alone. */
  parentDeathSignal?: boolean | undefined;
}

export interface Tgtd {
  /** "127.0.0.1:<port>", as iscsi:// URLs and `iscsi-ls` want it. */
  readonly portal: string;
  readonly port: number;
  /** tgtd's `-C`; pass it to tgtadm/tgt-admin together with `env`. */
  readonly controlPort: number;
  readonly pid: number;
  /** The private directory holding the management socket. */
  readonly stateDir: string;
  /** Environment for tgtadm/tgt-admin to reach this tgtd (TGT_IPC_SOCKET, PATH with /usr/sbin). */
  readonly env: Readonly<Record<string, string>>;
  /**
   * Apply a targets.conf: `tgt-admin -C <control> -c <file> --update ALL -v` by default (the
   * service's reload: targets not in the file are deleted, the others re-created from the file,
   * except targets in use), or `tgt-admin -C <control> -c <file> -e -v` with mode 'execute' (the
   * service's start: only adds targets that do not exist yet). Rejects with an ExecError
   * (`status`, `stderr`) when tgt-admin fails. NB: tgt-admin skips a backing store that is
   * missing or in use with exit 0 ("# Skipping device"): check the LUNs with targets().
   */
  loadConfig(targetsConfPath: string, opts?: { mode?: 'update' | 'execute' }): Promise<ExecResult>;
  /** `tgtadm -C <control> --lld iscsi --mode target --op show`, as printed. */
  show(): Promise<string>;
  /** The same, parsed. */
  targets(): Promise<TgtTarget[]>;
  /** The portals tgtd listens on (`tgtadm --mode portal --op show`), e.g. ["127.0.0.1:3261,1"]. */
  portals(): Promise<string[]>;
  /** What tgtd printed so far (stdout and stderr). */
  output(): string;
  /** SIGKILL by pid, wait for the exit, check it is gone, remove the state directory. Idempotent. */
  stop(): Promise<void>;
}

const live = new Map<number, Tgtd>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pid of live.keys()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

/** Stop every tgtd this process started and has not stopped yet. */
export async function stopAllTgtd(): Promise<void> {
  await Promise.all([...live.values()].map((t) => t.stop()));
}

/** Whether a process with this pid is running (zombies and missing pids are not). */
export function isRunning(pid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  // "pid (comm) S …": the state follows the last ')' (comm may hold anything).
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X' && state !== 'x';
}

/** A TCP port on 127.0.0.1 that nobody listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, TGT_HOST, () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolvePort(addr.port) : reject(new Error('no free port on 127.0.0.1'))));
    });
  });
}

/** Start a private tgtd on 127.0.0.1 and wait until it answers tgtadm on the asked portal. */
export async function startTgtd(env: TgtdEnv, opts: TgtdOptions = {}): Promise<Tgtd> {
  if (process.getuid?.() !== 0) {
    throw new DomuError('the lab storage server (tgtd) needs root: tgtadm only talks to tgtd as uid 0', { hint: 'run it as root' });
  }
  for (const tool of ['tgtd', 'tgtadm', 'tgt-admin']) {
    if (!(await which(tool))) throw new DomuError(`program not found: ${tool}`, { hint: TGT_HINT });
  }
  if (opts.controlPort !== undefined && !(Number.isInteger(opts.controlPort) && opts.controlPort >= 1 && opts.controlPort <= 32767)) {
    throw new DomuError(`tgtd control port ${opts.controlPort}: tgtd takes 1 to 32767`);
  }
  const attempts = opts.port === undefined ? 5 : 1;
  let lastError: unknown;
  for (let i = 0; i < attempts; i++) {
    const port = opts.port ?? (await freePort());
    try {
      return await startOnce(env, port, opts.controlPort ?? randomInt(1, 32768), opts);
    } catch (e) {
      lastError = e;
      if (!(e instanceof PortalError)) throw e;
    }
  }
  throw lastError;
}

/** tgtd started, but not on the portal asked for (port taken: it then falls back to *:3260). */
class PortalError extends DomuError {}

async function makeStateDir(given: string | undefined): Promise<string> {
  if (given === undefined) return mkdtemp(join(tmpdir(), 'domu-tgtd-'));
  const dir = resolve(given);
  await mkdir(dir, { recursive: true });
  if ((await readdir(dir)).length) throw new DomuError(`tgtd state directory ${dir} is not empty`, { hint: 'give tgtd a directory of its own (stop() removes it)' });
  return dir;
}

async function startOnce(env: TgtdEnv, port: number, controlPort: number, opts: TgtdOptions): Promise<Tgtd> {
  if (env.signal.aborted) throw abortError(env.signal);
  const stateDir = await makeStateDir(opts.stateDir);
  const socket = join(stateDir, 'socket');
  if (`${socket}.${controlPort}.lock`.length > MAX_SOCKET_PATH) {
    await rm(stateDir, { recursive: true, force: true });
    throw new DomuError(`tgtd state directory ${stateDir}: too long for a socket path (at most ${MAX_SOCKET_PATH} bytes with the socket's name)`, { hint: 'use a shorter directory' });
  }
  const tgtEnv = { TGT_IPC_SOCKET: socket, PATH: PATH_WITH_SBIN };
  installExitHook();
  const tgtdArgs = ['-f', '-C', String(controlPort), '--iscsi', `portal=${TGT_HOST}:${port}`];
  // setpriv sets PR_SET_PDEATHSIG and execs tgtd: the pid is tgtd's own.
  const [file, args] = opts.parentDeathSignal === false ? ['tgtd', tgtdArgs] : dyingWithUs('tgtd', tgtdArgs);
  env.log.debug(`$ ${commandLine(file, args)}`);
  const child = execa(file, args, {
    env: tgtEnv,
    extendEnv: true,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: false,
    reject: false,
    cleanup: true,
    cancelSignal: env.signal,
    killSignal: 'SIGKILL',
  });
  const pid = child.pid;
  if (pid === undefined) {
    await child;
    await rm(stateDir, { recursive: true, force: true });
    throw new DomuError(`could not start ${file}`, { hint: TGT_HINT });
  }
  let out = '';
  const collect = (chunk: Buffer) => {
    if (out.length < 1_000_000) out += chunk.toString('utf8');
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  let exited = false;
  const exit = child.then((r) => {
    exited = true;
    return r;
  });

  const tgtadm = (args: string[]) => run(env, 'tgtadm', ['-C', String(controlPort), ...args], { env: tgtEnv, timeoutMs: COMMAND_TIMEOUT_MS, missingHint: TGT_HINT });
  const showText = async () => (await tgtadm(['--lld', 'iscsi', '--mode', 'target', '--op', 'show'])).stdout;

  let releaseCleanup = () => {};
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (!exited) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // exited on its own meanwhile
        }
        await exit;
      }
      live.delete(pid);
      releaseCleanup();
      if (isRunning(pid)) throw new DomuError(`tgtd (pid ${pid}) is still running after SIGKILL`, { hint: `kill -KILL ${pid}` });
      await rm(stateDir, { recursive: true, force: true });
    })());

  const tgtd: Tgtd = {
    portal: `${TGT_HOST}:${port}`,
    port,
    controlPort,
    pid,
    stateDir,
    env: tgtEnv,
    loadConfig: (conf, o = {}) =>
      run(env, 'tgt-admin', ['-C', String(controlPort), '-c', conf, ...(o.mode === 'execute' ? ['-e'] : ['--update', 'ALL']), '-v'], {
        env: tgtEnv,
        timeoutMs: COMMAND_TIMEOUT_MS,
        missingHint: TGT_HINT,
      }),
    show: showText,
    targets: async () => parseTgtadmShow(await showText()),
    portals: async () => {
      const { stdout } = await tgtadm(['--lld', 'iscsi', '--mode', 'portal', '--op', 'show']);
      return [...stdout.matchAll(/^Portal:\s*(\S+)/gm)].map((m) => m[1] ?? '');
    },
    output: () => out,
    stop,
  };
  live.set(pid, tgtd);
  releaseCleanup = env.cleanup.push(`kill tgtd (pid ${pid}), remove ${stateDir}`, stop, { kind: 'path', path: stateDir });

  // Ready when tgtadm gets an answer: tgtd binds its portals before it serves the socket.
  try {
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (exited) throw new DomuError(`tgtd exited at start (exit ${(await exit).exitCode}): ${oneLine(out)}`, { hint: 'see its message; is another tgtd using this state directory?' });
      const r = await tgtadm(['--lld', 'iscsi', '--mode', 'portal', '--op', 'show']).catch((e: unknown) => {
        if (env.signal.aborted) throw abortError(env.signal);
        return e instanceof DomuError && /program not found/.test(e.message) ? Promise.reject(e) : undefined;
      });
      if (r?.exitCode === 0) break;
      if (Date.now() > deadline) throw new DomuError(`tgtd did not answer tgtadm within ${START_TIMEOUT_MS / 1000} s: ${oneLine(out)}`);
      await sleep(50);
    }
    const portals = await tgtd.portals();
    if (portals.length !== 1 || portals[0] !== `${TGT_HOST}:${port},1`) {
      throw new PortalError(`tgtd listens on ${portals.join(' ') || 'nothing'} instead of ${TGT_HOST}:${port}: ${oneLine(out)}`, { hint: 'the port was taken; choose another one' });
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return tgtd;
}

function oneLine(text: string): string {
  return text.split('\n').map((l) => l.trim()).filter(Boolean).slice(-3).join(' | ') || '(no output)';
}
