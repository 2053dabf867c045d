// The nested Xen host: Debian's hypervisor booted by QEMU (TCG, `-cpu qemu64,+svm,+npt`, no
// network: `-nic none`) with a Debian kernel as PV dom0 and our dom0 ramdisk (dom0-initramfs.ts),
// the store disk attached as a virtio disk. QEMU is a QemuGuest (qemu.ts): killed by pid, with
// the parent-death signal, through the cleanup registry.
//
// The console (Xen's com1 on QEMU's stdio) carries three kinds of lines: Xen's own (`(XEN) …`),
// guest console lines that dom0 streams with the prefix `G| ` (domu-guest-log), and dom0's
// (kernel, /init, the shell). After the ready marker the host types into dom0's console shell:
// first `stty -echo` with empty prompts and a tag the shell computes (`P=DOMU-DOM0-$((6*7))`, so
// the typed text can never match it), then for each run() a begin line, the command lines and an
// end line with the exit status of the last command.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { StageContext } from '../core/context.js';
import { abortError, DomuError } from '../core/errors.js';
import { fetchKernelPackage, type KernelPackage } from '../kernel/kernel.js';
import { buildDom0Initramfs, type Dom0Initramfs } from './dom0-initramfs.js';
import { writeDom0Initrd, type Dom0Params } from './dom0-params.js';
import { GuestWaitError, multibootModules, QemuGuest, type QemuSpec } from './qemu.js';
import { fetchXenPackages, type XenPackages } from './xen-packages.js';

export const DOM0_READY = 'domu-dom0-ready';
export const DOM0_FAILED = 'domu-dom0-failed';
export const GUEST_PREFIX = 'G| ';
const TAG = 'DOMU-DOM0-42';
/** Typing on dom0's console: bytes at a time, and the pause between them (see type()). */
const TYPE_CHUNK = 48;
const TYPE_GAP_MS = 25;
/** facts.md: TCG needs svm for HVM/PVH and npt for HAP; `max` breaks dom0 (SMAP). */
export const XEN_CPU = 'qemu64,+svm,+npt';
export const DOM0_KERNEL_ARGS = 'console=hvc0 earlyprintk=xen rdinit=/init';

export interface XenHostParts {
  xen: XenPackages;
  kernel: KernelPackage;
  initramfs: Dom0Initramfs;
}

/** Fetch the Xen packages and the dom0 kernel (a given one, else linux-image-amd64), build the dom0 ramdisk. */
export async function prepareXenHost(ctx: StageContext, opts: { kernel?: KernelPackage; aptEtc?: string } = {}): Promise<XenHostParts> {
  const xen = await fetchXenPackages(ctx, opts.aptEtc === undefined ? {} : { aptEtc: opts.aptEtc });
  const kernel = opts.kernel ?? (await fetchKernelPackage(ctx, { package: 'linux-image-amd64', ...(opts.aptEtc === undefined ? {} : { aptEtc: opts.aptEtc }) }));
  const initramfs = await buildDom0Initramfs(ctx, xen, kernel);
  return { xen, kernel, initramfs };
}

export interface XenHostSpec extends XenHostParts {
  params: Dom0Params;
  /** A raw image attached as the first virtio disk (/dev/vda in dom0). */
  storeImage?: string | undefined;
  /** Write the store image for real; otherwise QEMU runs with -snapshot and it stays unchanged. */
  storeWritable?: boolean;
  /**
   * Shared disks (the lab's iSCSI LUNs through QEMU's own iSCSI client, iscsi://…): virtio disks
   * with these serials, always written for real (no -snapshot: the other host shares them).
   */
  sharedDisks?: readonly { url: string; serial: string }[] | undefined;
  /**
   * A NIC on a private Ethernet segment with one other QEMU: one TCP connection between the two
   * QEMU processes on 127.0.0.1 (`-netdev stream`; the `listen` side must be started first).
   * Nothing else is on it and nothing of it reaches the host's network. Not `dgram`: UDP between
   * two busy TCG processes drops frames, and the dom0s' TCP then crawls (a live migration over it
   * took minutes).
   */
  segment?: { mac: string; port: number; role: 'listen' | 'connect' } | undefined;
  /** Seconds from QEMU's start to the ready marker. */
  readyTimeoutS: number;
  /** Where the console log and the run's initrd go (default <workDir>/xen). */
  dir?: string;
  memoryMiB?: number;
  dom0MemoryMiB?: number;
}

export interface ConsoleLines {
  xen: string[];
  dom0: string[];
  guest: string[];
}

/** Split console text into Xen's, dom0's and the guests' lines (prefixes removed). */
export function splitConsole(text: string): ConsoleLines {
  const out: ConsoleLines = { xen: [], dom0: [], guest: [] };
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (!line) continue;
    if (line.startsWith(GUEST_PREFIX)) out.guest.push(line.slice(GUEST_PREFIX.length));
    else if (line.startsWith('(XEN)')) out.xen.push(line);
    else out.dom0.push(line);
  }
  return out;
}

/** -drive/-device pairs: a virtio disk per shared disk, its serial what dom0-init links by. */
export function sharedDiskArgs(disks: readonly { url: string; serial: string }[]): string[] {
  return disks.flatMap((d, i) => {
    if (!/^[A-Za-z0-9_-]{1,20}$/.test(d.serial)) throw new DomuError(`shared disk serial ${JSON.stringify(d.serial)}: letters, digits, "_" and "-", at most 20`);
    return ['-drive', `file=${d.url.replace(/,/g, ',,')},format=raw,if=none,id=shared${i}`, '-device', `virtio-blk-pci,drive=shared${i},serial=${d.serial}`];
  });
}

/** The segment NIC: `-netdev stream` over 127.0.0.1:<port>, a virtio NIC with the host's MAC. */
export function segmentArgs(seg: XenHostSpec['segment']): string[] {
  if (!seg) return [];
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(seg.mac)) throw new DomuError(`segment MAC ${JSON.stringify(seg.mac)} is not a MAC address`);
  if (!Number.isInteger(seg.port) || seg.port < 1 || seg.port > 65535) throw new DomuError(`segment port ${seg.port} is not a TCP port`);
  const net = `stream,id=segment,server=${seg.role === 'listen' ? 'on' : 'off'},addr.type=inet,addr.host=127.0.0.1,addr.port=${seg.port}`;
  return ['-netdev', net, '-device', `virtio-net-pci,netdev=segment,mac=${seg.mac.toLowerCase()}`];
}

/** Xen's command line (facts.md): console on com1, dom0 fixed at `dom0MiB`, one vCPU, no reboot. */
export function xenArgs(dom0MiB: number): string {
  return `console=com1 com1=115200,8n1 dom0_mem=${dom0MiB}M,max:${dom0MiB}M dom0_max_vcpus=1 loglvl=all guest_loglvl=all noreboot`;
}

export interface RunResult {
  /** The output lines between the begin and end lines, guest lines (`G| `) left out. */
  lines: string[];
  /** The exit status of the last command line. */
  status: number;
}

export class XenHost {
  private runs = 0;
  private shellReady = false;
  /** Console offset after which run() looks (past the last run's end). */
  private pos: number;

  private constructor(
    private readonly ctx: StageContext,
    readonly qemu: QemuGuest,
    readonly parts: XenHostParts,
    /** Seconds from QEMU's start to the dom0 ready marker. */
    readonly secondsToReady: number,
    readyEnd: number,
  ) {
    this.pos = readyEnd;
  }

  /** Boot Xen with dom0 and wait for dom0's ready marker; stops QEMU and throws one line on failure. */
  static async start(ctx: StageContext, spec: XenHostSpec): Promise<XenHost> {
    const dir = spec.dir ?? join(ctx.workDir, 'xen');
    await mkdir(dir, { recursive: true });
    const initrd = join(dir, 'dom0-initrd.gz');
    await writeDom0Initrd(ctx, spec.initramfs, spec.params, initrd);
    const dom0MiB = spec.dom0MemoryMiB ?? 768;
    const qspec: QemuSpec = {
      accel: 'tcg', // facts.md: KVM is not usable on these machines
      cpu: XEN_CPU,
      kernel: spec.xen.hypervisor,
      append: xenArgs(dom0MiB),
      initrd: multibootModules([{ file: spec.kernel.image, args: DOM0_KERNEL_ARGS }, { file: initrd }]),
      memoryMiB: spec.memoryMiB ?? 2048,
      disks: spec.storeImage ? [spec.storeImage] : [],
      writable: (spec.storeWritable ?? false) || !!spec.sharedDisks?.length,
      logFile: join(dir, 'console.log'),
      // virtio-rng: entropy for dom0 from the host (dom0-initramfs.ts, DOM0_MODULES).
      extraArgs: ['-machine', 'pc', '-nic', 'none', '-device', 'virtio-rng-pci', ...sharedDiskArgs(spec.sharedDisks ?? []), ...segmentArgs(spec.segment)],
    };
    ctx.log.info(`xen: starting ${spec.xen.package} ${spec.xen.version} under QEMU (TCG, ${XEN_CPU}), dom0 ${spec.kernel.release} with ${dom0MiB} MiB${spec.storeImage ? `, store ${spec.storeImage}${qspec.writable ? '' : ' (snapshot)'}` : ''}; console in ${qspec.logFile}`);
    const qemu = await QemuGuest.start(ctx, qspec);
    try {
      ctx.progress(`waiting for dom0 (${DOM0_READY}, up to ${spec.readyTimeoutS} s)`);
      const deadline = qemu.startedAt + spec.readyTimeoutS * 1000;
      const end = new RegExp(`^(?:${DOM0_READY}|${DOM0_FAILED}: .*|.*Hardware Dom0 crashed.*|.*Panic on CPU.*)$`, 'm');
      const m = await qemu.waitFor(end, `dom0's ready marker ${DOM0_READY}`, deadline);
      if (m.match[0] !== DOM0_READY) {
        await qemu.waitFor(/\n.*\n.*\n/, 'more console lines', performance.now() + 2000, m.end).catch(() => undefined);
        throw new DomuError(`the nested Xen host did not come up: ${m.match[0].trim()}`, { hint: `the whole console is in ${qspec.logFile}; last Xen lines:\n${splitConsole(qemu.console).xen.slice(-5).join('\n')}` });
      }
      const secs = (performance.now() - qemu.startedAt) / 1000;
      ctx.log.info(`xen: dom0 ready ${secs.toFixed(1)} s after QEMU started`);
      return new XenHost(ctx, qemu, spec, secs, m.end);
    } catch (e) {
      await qemu.stop();
      if (ctx.signal.aborted) throw abortError(ctx.signal);
      if (e instanceof GuestWaitError) {
        throw new DomuError(`the nested Xen host did not come up: ${e.message}`, { hint: `the whole console is in ${qspec.logFile}; its last lines:\n${qemu.tail(8)}` });
      }
      throw e;
    }
  }

  /** The console so far (no carriage returns). */
  get console(): string {
    return this.qemu.console;
  }

  lines(): ConsoleLines {
    return splitConsole(this.qemu.console);
  }

  /** The last `n` lines of one kind. */
  tail(kind: keyof ConsoleLines, n: number): string[] {
    return this.lines()[kind].slice(-n);
  }

  /**
   * Type `commands` (lines of dom0 shell text, never user values: pass those through files) into
   * dom0's console shell and wait for them to finish; `timeoutS` for all of it. A command that
   * reads stdin would read the following typed lines: give it a here-document or </dev/null.
   */
  async run(commands: string | readonly string[], timeoutS: number): Promise<RunResult> {
    const deadline = performance.now() + timeoutS * 1000;
    const text = typeof commands === 'string' ? commands : commands.join('\n');
    await this.shell(deadline);
    const n = ++this.runs;
    const first = text.split('\n')[0] ?? '';
    this.ctx.log.info(`dom0 $ ${first}${text.includes('\n') ? ' …' : ''}`);
    this.ctx.progress(`dom0: ${first}`);
    await this.type(`echo "$P begin-${n}"\n${text}\necho "$P end-${n} $?"\n`);
    const begin = await this.wait(new RegExp(`^${TAG} begin-${n}$`, 'm'), `dom0 to start: ${first}`, deadline, this.pos);
    const end = await this.wait(new RegExp(`^${TAG} end-${n} (\\d+)$`, 'm'), `dom0 to finish: ${first}`, deadline, begin.end);
    this.pos = end.end;
    const body = this.console.slice(begin.end, end.end - end.match[0].length);
    // Guest lines are left out; `(XEN)` lines stay: `xl dmesg` prints them (Xen's own messages
    // printed meanwhile stay too).
    const lines = body.split('\n').map((l) => l.trimEnd()).filter((l) => l && !l.startsWith(GUEST_PREFIX));
    return { lines, status: Number(end.match[1]) };
  }

  /** Wait for a guest console line (streamed by domu-guest-log) matching `re` after console offset `from`. */
  async waitForGuest(re: RegExp, what: string, timeoutS: number, from = 0): Promise<{ line: string; end: number }> {
    const inner = re.source.replace(/^\^/, '');
    const m = await this.wait(new RegExp(`^${GUEST_PREFIX.replace('|', '\\|')}(?:${inner})`, re.flags.replace('g', '').includes('m') ? re.flags.replace('g', '') : `${re.flags.replace('g', '')}m`), what, performance.now() + timeoutS * 1000, from);
    const lineEnd = this.console.indexOf('\n', m.end);
    return { line: this.console.slice(m.end - m.match[0].length + GUEST_PREFIX.length, lineEnd < 0 ? undefined : lineEnd), end: m.end };
  }

  /** Kill QEMU (by pid) and wait for it. */
  async stop(): Promise<void> {
    await this.qemu.stop();
  }

  /**
   * Type on dom0's console in small pieces: Xen keeps serial input for dom0 in a ring of 128
   * bytes and drops what does not fit while dom0 (slow under TCG) has not read it yet.
   */
  private async type(text: string): Promise<void> {
    for (let i = 0; i < text.length; i += TYPE_CHUNK) {
      if (i) await new Promise((r) => setTimeout(r, TYPE_GAP_MS));
      this.qemu.send(text.slice(i, i + TYPE_CHUNK));
    }
  }

  /** Quiet the shell's echo and prompts once, and set the tag. */
  private async shell(deadline: number): Promise<void> {
    if (this.shellReady) return;
    this.ctx.progress("waiting for dom0's console shell");
    let ready: { end: number } | undefined;
    // Typed again every 10 s: what was typed before the shell read the console may be lost.
    while (!ready) {
      await this.type(`\nstty -echo; PS1=; PS2=; P=DOMU-DOM0-$((6*7)); echo "$P ready"\n`);
      const attempt = Math.min(deadline, performance.now() + 10_000);
      ready = await this.wait(new RegExp(`^${TAG} ready$`, 'm'), "dom0's console shell", attempt, this.pos).catch((e: unknown) => {
        if (e instanceof DomuError && /timed out/.test(e.message) && attempt < deadline) return undefined;
        throw e;
      });
    }
    this.pos = ready.end;
    this.shellReady = true;
  }

  private async wait(re: RegExp, what: string, deadline: number, from: number) {
    try {
      return await this.qemu.waitFor(re, what, deadline, from);
    } catch (e) {
      if (this.ctx.signal.aborted) throw abortError(this.ctx.signal);
      if (e instanceof GuestWaitError) {
        throw new DomuError(`nested Xen host: ${e.message}`, { hint: `the whole console is in ${this.qemu.spec.logFile}; dom0's last lines:\n${this.tail('dom0', 8).join('\n')}` });
      }
      throw e;
    }
  }
}
