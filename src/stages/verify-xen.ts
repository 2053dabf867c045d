// `domu verify` on real Xen: the build in --out, published by the real publish code into a scratch
// store, started with `xl create` of its own generated config under Debian's Xen hypervisor nested
// in QEMU (xen/nested-xen.ts), checked through its console, then moved (PVH: a live migration to
// the same host; PV: save and restore, since Debian's Xen cannot live-migrate PV guests) and
// checked again, then powered off and its file read back from its disk image in dom0.
//
// The phases are methods of one XenVerification, each run as a pipeline stage of its own (so the
// progress display says what is being waited for), each recording its checks with their times. A
// failed check is one error line naming it, then the last lines of the guest console and of
// `xl dmesg`. What is typed in dom0 is fixed text; the description's values (guest name, address,
// paths) are dom0 shell variables read from its parameter files (loadParams).
import { dirname } from 'node:path';
import type { StageContext } from '../core/context.js';
import { abortError, DomuError, errorMessage } from '../core/errors.js';
import { parseXlInfo } from '../xen/hypervisor.js';
import { splitConsole, type XenHost } from '../xen/nested-xen.js';
import { READY_MARKER, TAIL_LINES } from './verify.js';
import { GUEST_FILE, GUEST_TAG, parseAfter, parseGuestFacts, parsePings, parseWritten, pauseOf, type GuestFacts, type GuestScript } from './verify-xen-guest.js';

export interface Check {
  name: string;
  ok: boolean;
  /** What was seen. */
  detail: string;
  /** Seconds from the start of the step the check belongs to. */
  seconds: number;
}

export interface XenGuestExpect {
  /** busybox --list count of the build (null: not recorded). */
  applets: number | null;
  release: string | null;
  modules: string[];
  /** The guest's static address `a.b.c.d/prefix`, or undefined (dhcp, none: no address or ping checks). */
  address: string | undefined;
  /** dom0's address on the bridge (the first host's). */
  dom0Address: string;
  /** The root device of the guest's root= (e.g. /dev/xvda). */
  rootDevice: string;
}

export interface MoveResult {
  kind: 'migrate' | 'save-restore';
  /** The xl command's time. */
  seconds: number;
  /** The longest stop of the guest's own clock while it moved. */
  pauseSeconds: number;
  domainIds: [string, string];
}

/** dom0's shell variables from its parameter files (initramfs/dom0-init writes them). */
const LOAD_PARAMS = [
  'read -r DOMU_STORE < /etc/domu-lab/store_path; read -r DOMU_GUEST < /etc/domu-lab/guest_name',
  'read -r DOMU_GUEST_CONFIG < /etc/domu-lab/guest_config',
  // Optional ones: empty when the file is not there (no image file with store.disk: lun, no peer in verify).
  'DOMU_IMAGE=; [ -e /etc/domu-lab/guest_image ] && read -r DOMU_IMAGE < /etc/domu-lab/guest_image',
  'DOMU_GUEST_ADDRESS=; [ -e /etc/domu-lab/guest_address ] && read -r DOMU_GUEST_ADDRESS < /etc/domu-lab/guest_address',
  'DOMU_PEER=; [ -e /etc/domu-lab/peer_address ] && read -r DOMU_PEER < /etc/domu-lab/peer_address',
  'DOMU_STORE_DEVICE=; [ -e /etc/domu-lab/store_device ] && read -r DOMU_STORE_DEVICE < /etc/domu-lab/store_device; true',
];

const round = (s: number) => Math.round(s * 100) / 100;
const since = (t: number) => round((performance.now() - t) / 1000);

export class XenVerification {
  readonly checks: Check[] = [];
  protected written: string | undefined;
  protected uptimeBefore = NaN;
  /** The dom0s whose shells have the parameters loaded (the lab moves the guest between two). */
  private readonly loaded = new Set<XenHost>();

  constructor(
    /** The dom0 the guest runs on (the lab changes it when the guest moves). */
    protected host: XenHost,
    protected readonly expect: XenGuestExpect,
    protected readonly timeoutS: number,
    protected readonly ctx: StageContext,
  ) {}

  /** The guest's console lines after console offset `from`. */
  protected guestText(from: number, to?: number): string {
    return splitConsole(this.host.console.slice(from, to)).guest.join('\n');
  }

  protected record(name: string, ok: boolean, detail: string, t0: number): void {
    const c = { name, ok, detail, seconds: since(t0) };
    this.checks.push(c);
    this.ctx.log.info(`check ${name}: ${ok ? 'ok' : 'FAILED'} (${c.seconds} s): ${detail}`);
  }

  /** Record a check; a failed one ends the verification with the console tails. */
  protected async must(name: string, ok: boolean, detail: string, t0: number): Promise<void> {
    this.record(name, ok, detail, t0);
    if (!ok) throw await this.failure(`check "${name}" failed: ${detail}`);
  }

  /** The error of a failed phase: its line, then the guest's console and `xl dmesg`. */
  async failure(line: string): Promise<Error> {
    if (this.ctx.signal.aborted) return abortError(this.ctx.signal);
    const dmesg = await this.host.run(['xl dmesg 2>&1 | tail -n 30'], 20).then(
      (r) => r.lines.join('\n'),
      (e: unknown) => `(xl dmesg did not answer: ${errorMessage(e)})`,
    );
    return new DomuError(
      `${line}\nthe last ${TAIL_LINES} lines of the guest console:\n${this.host.tail('guest', TAIL_LINES).join('\n') || '(nothing on the guest console)'}\nthe last ${TAIL_LINES} lines of xl dmesg:\n${dmesg || '(empty)'}`,
      { hint: `the whole console (Xen, dom0 and the guest's lines, "G| ") is in ${this.host.qemu.spec.logFile}` },
    );
  }

  /** A dom0 command (on `host`, default the guest's) with the phase's time limit; fails only when dom0 does not answer. */
  protected async dom0(lines: string[], host = this.host): Promise<{ out: string; status: number }> {
    if (!this.loaded.has(host)) {
      await host.run(LOAD_PARAMS, this.timeoutS);
      this.loaded.add(host);
    }
    const r = await host.run(lines, this.timeoutS);
    return { out: r.lines.join('\n'), status: r.status };
  }

  /** Type one of GUEST_SCRIPTS on the guest's console (domu-guest-send, in dom0). */
  protected async send(script: GuestScript): Promise<void> {
    const r = await this.dom0([`domu-guest-send "$DOMU_GUEST" < /etc/domu-scripts/${script}`]);
    if (r.status !== 0) throw new DomuError(`could not type on the guest's console: ${lastLine(r.out) || `domu-guest-send exited ${r.status}`}`);
  }

  /** Type `script` on the guest's console and wait for its `end` answer; the guest's lines meanwhile. */
  protected async inGuest(script: GuestScript, what: string, end = 'end', timeoutS = this.timeoutS): Promise<string> {
    const from = this.host.console.length;
    await this.send(script);
    const m = await this.host.waitForGuest(new RegExp(`.*${GUEST_TAG} ${end}\\b`), what, timeoutS, from);
    return this.guestText(from, m.end);
  }

  /** `xl create` of the config as published, then the guest's ready marker and its console shell. */
  async create(configPath: string): Promise<{ createSeconds: number; markerSeconds: number }> {
    const t0 = performance.now();
    const r = await this.dom0(['xl create "$DOMU_STORE/$DOMU_GUEST_CONFIG" 2>&1 </dev/null']);
    await this.must('xl create', r.status === 0, r.status === 0 ? `${configPath} accepted` : `xl create ${configPath} exited ${r.status}: ${lastLine(r.out)}`, t0);
    const createSeconds = since(t0);
    this.ctx.progress(`waiting for ${READY_MARKER} on the guest console (xl create ${configPath})`);
    try {
      await this.host.waitForGuest(new RegExp(`${READY_MARKER}$`), `the guest's ready marker ${READY_MARKER}`, this.timeoutS - createSeconds);
    } catch (e) {
      if (this.ctx.signal.aborted) throw abortError(this.ctx.signal);
      this.record('ready marker', false, errorMessage(e), t0);
      throw await this.failure(`the guest did not boot: ${errorMessage(e)} (--timeout ${this.timeoutS})`);
    }
    const markerSeconds = since(t0);
    this.record('ready marker', true, `${READY_MARKER} ${markerSeconds} s after xl create`, t0);
    await this.openShell();
    return { createSeconds, markerSeconds };
  }

  /**
   * The hello script (Enter first, for an askfirst console) every 10 s, until the shell answers.
   * Also after a move: a PV guest's console is hung up by its restore, so its shell ends at its
   * next read and init starts the askfirst shell again.
   */
  protected async openShell(check = 'console shell'): Promise<void> {
    const t0 = performance.now();
    const deadline = t0 + this.timeoutS * 1000;
    for (;;) {
      const left = (deadline - performance.now()) / 1000;
      try {
        await this.inGuest('guest-hello', 'the guest console shell', 'ready', Math.max(1, Math.min(10, left)));
        break;
      } catch (e) {
        if (this.ctx.signal.aborted) throw abortError(this.ctx.signal);
        if (performance.now() < deadline - 1000 && /timed out/.test(errorMessage(e))) continue;
        this.record(check, false, errorMessage(e), t0);
        throw await this.failure(`${check === 'console shell' ? `the guest reached ${READY_MARKER}, but ` : ''}no shell answered on its console (hvc0): ${errorMessage(e)}`);
      }
    }
    this.record(check, true, 'a shell answers on hvc0', t0);
  }

  /** Applets, root device, modules, address, pings both ways, a file on the disk. */
  async checkGuest(): Promise<GuestFacts> {
    const e = this.expect;
    let t0 = performance.now();
    this.ctx.progress('reading the guest: applets, root, modules, eth0');
    const facts = parseGuestFacts(await this.inGuest('guest-checks', 'the guest checks'), e.modules);
    this.uptimeBefore = facts.uptime;
    await this.must('applets', facts.applets > 0 && (e.applets === null || facts.applets === e.applets), `busybox --list: ${facts.applets}${e.applets === null ? '' : `, the build recorded ${e.applets}`}`, t0);
    await this.must('kernel release', e.release === null || facts.release === e.release, `uname -r: ${facts.release}${e.release ? `, the build is for ${e.release}` : ''}`, t0);
    const root = facts.root;
    await this.must('root file system', !!root && root.device === e.rootDevice && root.type === 'ext4', root ? `${root.device} ${root.type} (${root.options}) on /` : 'nothing mounted on /', t0);
    const bad = facts.modules.filter((m) => m.verdict !== 'loaded');
    const modDetail = [...facts.modules.map((m) => `${m.name} ${m.verdict === 'loaded' ? 'loaded' : m.detail}`), ...facts.moduleNotes].join('; ') || 'no modules in /etc/modules';
    await this.must('modules loaded', bad.length === 0 && facts.moduleNotes.length === 0, modDetail, t0);
    if (e.address !== undefined) {
      await this.must('address', facts.addresses.includes(e.address), `eth0 ${facts.eth0 === undefined ? 'missing' : `<${facts.eth0}>`}: ${facts.addresses.join(', ') || 'no IPv4 address'} (configured ${e.address})`, t0);
      await this.pings('');
    }
    t0 = performance.now();
    this.ctx.progress('writing a file on the guest disk');
    const written = parseWritten(await this.inGuest('guest-write', 'a file written in the guest'));
    this.written = written;
    await this.must('file written', written !== undefined, written ? `${GUEST_FILE} holds ${written} (synced)` : `could not write ${GUEST_FILE} on the root file system`, t0);
    return facts;
  }

  /** dom0 → guest, then guest → dom0 (the address the guest learned from dom0's ping). */
  protected async pings(after: string): Promise<void> {
    let t0 = performance.now();
    this.ctx.progress(`ping dom0 → guest${after}`);
    const r = await this.dom0(['ping -c 3 -w 15 "$DOMU_GUEST_ADDRESS" 2>&1 </dev/null']);
    await this.must(`ping dom0 → guest${after}`, r.status === 0, r.status === 0 ? lastLine(r.out, /packets transmitted/) : `ping exited ${r.status}: ${lastLine(r.out)}`, t0);
    t0 = performance.now();
    this.ctx.progress(`ping guest → dom0${after}`);
    const p = parsePings(await this.inGuest('guest-pings', 'ping from the guest'));
    const toDom0 = p.pinged.find((x) => x.address === this.expect.dom0Address);
    const seen = p.pinged.map((x) => x.address).join(', ') || 'empty';
    await this.must(`ping guest → dom0${after}`, toDom0?.status === 0, toDom0 ? `ping ${toDom0.address}: exit ${toDom0.status}` : `dom0's ${this.expect.dom0Address} is not in the guest's ARP table (${seen})`, t0);
  }

  /**
   * `live`: `xl migrate` to the same host (`-s ""` runs the receiver locally instead of over ssh);
   * otherwise (a PV guest on a hypervisor without shadow paging) `xl save` and `xl restore`. Then: the same guest (uptime went on, no second ready marker), its
   * file, pings both ways.
   */
  async move(live: boolean): Promise<MoveResult> {
    const kind = live ? 'migrate' : 'save-restore';
    const t0 = performance.now();
    const before = (await this.dom0(['xl domid "$DOMU_GUEST"'])).out.trim();
    const markers = countMarkers(this.guestText(0));
    const hbFrom = this.host.console.length;
    await this.send('guest-hb-start');
    await this.host.waitForGuest(new RegExp(`.*${GUEST_TAG} hb `), 'the guest heartbeat', this.timeoutS, hbFrom);
    const t1 = performance.now();
    this.ctx.progress(kind === 'migrate' ? 'xl migrate (live, to the same host)' : 'xl save, then xl restore');
    const r =
      kind === 'migrate'
        ? await this.dom0(['xl migrate -s "" "$DOMU_GUEST" "xl migrate-receive" 2>&1 </dev/null'])
        : await this.dom0(['S="$DOMU_STORE/.domu-verify.save"; xl save "$DOMU_GUEST" "$S" 2>&1 </dev/null && xl restore "$S" 2>&1 </dev/null; R=$?; rm -f "$S"; [ $R = 0 ]']);
    const seconds = since(t1);
    await this.must(kind === 'migrate' ? 'live migration' : 'save and restore', r.status === 0, r.status === 0 ? `${lastLine(r.out, /successful/i) || 'done'} in ${seconds} s` : `exited ${r.status}: ${lastLine(r.out)}`, t1);
    const moved = this.host.console.length;
    await this.host.waitForGuest(new RegExp(`.*${GUEST_TAG} hb `), 'a heartbeat after the move', this.timeoutS, moved);
    await this.inGuest('guest-hb-stop', 'the heartbeat to stop', 'hb-stopped');
    await this.openShell('console shell after the move');
    const pauseSeconds = pauseOf(this.guestText(hbFrom));
    const now = (await this.dom0(['xl domid "$DOMU_GUEST"'])).out.trim();
    const a = parseAfter(await this.inGuest('guest-after', 'the guest after the move'));
    const newMarkers = countMarkers(this.guestText(0)) - markers;
    await this.must(
      'same guest after the move',
      a.uptime > this.uptimeBefore && newMarkers === 0 && now !== '' && now !== before,
      `domain id ${before} → ${now}; uptime ${this.uptimeBefore} s → ${a.uptime} s; ${newMarkers} new ready markers; pause ${pauseSeconds} s`,
      t0,
    );
    await this.must('file after the move', a.file === this.written, `${GUEST_FILE}: ${a.file || '(unreadable)'}`, t0);
    if (this.expect.address !== undefined) await this.pings(' after the move');
    return { kind, seconds, pauseSeconds, domainIds: [before, now] };
  }

  /** Power the guest off (rcS's shutdown unmounts), then read its file from the disk image in dom0. */
  async checkDisk(): Promise<void> {
    const t0 = performance.now();
    this.ctx.progress('poweroff; reading the file from the guest disk in dom0');
    const gone = await this.powerOffAndWait();
    const r = await this.dom0([`mkdir -p /mnt/domu-guest && mount -o loop "$DOMU_STORE/$DOMU_IMAGE" /mnt/domu-guest && { read -r F < /mnt/domu-guest${GUEST_FILE}; S=$?; echo "domu-file $F"; umount /mnt/domu-guest; [ $S = 0 ]; }`]);
    const text = /^domu-file (.*)$/m.exec(r.out)?.[1]?.trim() ?? '';
    await this.must('file on the guest disk', r.status === 0 && text === this.written, `${gone}; the image holds ${GUEST_FILE} = ${text || `(nothing: ${lastLine(r.out)})`}`, t0);
  }

  /** `poweroff` in the guest, then up to 60 s for its domain to go (destroyed after that); says how long it took. */
  protected async powerOffAndWait(): Promise<string> {
    await this.send('guest-poweroff');
    const gone = await this.dom0(['N=0; while xl domid "$DOMU_GUEST" >/dev/null 2>&1 && [ $N -lt 60 ]; do sleep 1; N=$((N+1)); done; xl destroy "$DOMU_GUEST" >/dev/null 2>&1; echo "gone after $N s"']);
    return lastLine(gone.out);
  }

  /** `xl info` as key → value. */
  async xlInfo(): Promise<Record<string, string>> {
    return parseXlInfo((await this.dom0(['xl info </dev/null'])).out);
  }

  get consoleLog(): string {
    return this.host.qemu.spec.logFile;
  }

  get logDir(): string {
    return dirname(this.host.qemu.spec.logFile);
  }
}

export function countMarkers(text: string): number {
  return text.split('\n').filter((l) => l.trim() === READY_MARKER).length;
}

/** The last line of a command's output (or the last that matches `prefer`); dom0's kernel messages are not its output. */
export function lastLine(text: string, prefer?: RegExp): string {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !/^\[\s*\d+\.\d+\]/.test(l));
  return (prefer && lines.filter((l) => prefer.test(l)).pop()) || lines.pop() || '';
}
