// The guest in `domu lab`: the checks of the Xen verification (verify-xen.ts), with two dom0s. The
// guest is created on one host from that host's own generated config, moves live to the other with
// MIGRATION.md's command `xl migrate <guest> <other host's address>` (over ssh between the dom0s,
// on their private segment), and back; or (store.disk: file) it boots on each host in turn.
//
// After each move: the domain runs on the target (`xl domid` there) and is gone from the source;
// its own uptime went on (no second ready marker: the same guest, not a reboot); the file written
// before the move reads back, and a new one is written; the first dom0 pings it across the segment;
// it pings that dom0 back. The pause is the longest gap in its 0.2 s heartbeats, which it prints on
// the source's console until it stops and on the target's once it runs there.
import { splitConsole, type XenHost } from '../xen/nested-xen.js';
import { countMarkers, lastLine, XenVerification, type XenGuestExpect } from './verify-xen.js';
import { GUEST_FILE, GUEST_TAG, parseAfter, parseWritten, pauseOf } from './verify-xen-guest.js';
import type { StageContext } from '../core/context.js';
import { abortError, DomuError, errorMessage } from '../core/errors.js';
import { TAIL_LINES } from './verify.js';

export interface LabHost {
  name: string;
  address: string;
  host: XenHost;
}

export interface LabMove {
  from: string;
  to: string;
  /** The xl migrate command's time. */
  seconds: number;
  /** The longest stop of the guest's own clock. */
  pauseSeconds: number;
}

const round = (s: number) => Math.round(s * 100) / 100;
const since = (t: number) => round((performance.now() - t) / 1000);

export class LabGuest extends XenVerification {
  private at = 0;

  constructor(
    private readonly hosts: readonly [LabHost, LabHost],
    expect: XenGuestExpect,
    timeoutS: number,
    ctx: StageContext,
  ) {
    super(hosts[0].host, expect, timeoutS, ctx);
  }

  /** The host the guest runs on (or last ran on). */
  get on(): LabHost {
    return this.hosts[this.at]!;
  }

  /** `xl create` of host `i`'s own config (as published), the ready marker, a console shell. */
  async createOn(i: 0 | 1, configPath: string): Promise<{ createSeconds: number; markerSeconds: number }> {
    this.at = i;
    this.host = this.hosts[i].host;
    return this.create(configPath);
  }

  /** dom0 of host `i` pings the guest (across the segment when the guest runs on the other host). */
  async pingFrom(i: 0 | 1, when: string): Promise<void> {
    const from = this.hosts[i];
    const t0 = performance.now();
    const across = i === this.at ? '' : ', across the segment';
    this.ctx.progress(`ping ${from.name} → guest${across}`);
    const r = await this.dom0(['ping -c 3 -w 15 "$DOMU_GUEST_ADDRESS" 2>&1 </dev/null'], from.host);
    await this.must(`ping ${from.name} → guest${across}${when}`, r.status === 0, r.status === 0 ? lastLine(r.out, /packets transmitted/) : `ping exited ${r.status}: ${lastLine(r.out)}`, t0);
  }

  /** test1 → test2 over the segment: ping, then ssh (what xl migrate will use). */
  async checkSegment(): Promise<void> {
    const [a, b] = this.hosts;
    let t0 = performance.now();
    const p = await this.dom0(['ping -c 2 -w 10 "$DOMU_PEER" 2>&1 </dev/null'], a.host);
    await this.must(`ping ${a.name} → ${b.name}`, p.status === 0, p.status === 0 ? lastLine(p.out, /packets transmitted/) : `ping ${b.address} exited ${p.status}: ${lastLine(p.out)}`, t0);
    t0 = performance.now();
    const s = await this.dom0(['ssh "$DOMU_PEER" hostname 2>&1 </dev/null'], a.host);
    const answered = lastLine(s.out, new RegExp(`^${b.name}$`));
    await this.must(`ssh ${a.name} → ${b.name}`, s.status === 0 && answered === b.name, s.status === 0 ? `ssh ${b.address} hostname: ${answered}` : `ssh ${b.address} exited ${s.status}: ${lastLine(s.out)}`, t0);
  }

  /** Live migration to the other host with `xl migrate <guest> <its address>`; then the same guest there. */
  async migrate(): Promise<LabMove> {
    const src = this.on;
    const to = (1 - this.at) as 0 | 1;
    const dst = this.hosts[to];
    const t0 = performance.now();
    const hbFrom = src.host.console.length;
    const dstFrom = dst.host.console.length;
    await this.send('guest-hb-start');
    await src.host.waitForGuest(new RegExp(`.*${GUEST_TAG} hb `), 'the guest heartbeat', this.timeoutS, hbFrom);
    const t1 = performance.now();
    this.ctx.progress(`xl migrate on ${src.name} → ${dst.name} (${dst.address}, over ssh on the segment)`);
    const r = await this.dom0(['xl migrate "$DOMU_GUEST" "$DOMU_PEER" 2>&1 </dev/null']);
    const seconds = since(t1);
    await this.must(`xl migrate ${src.name} → ${dst.name}`, r.status === 0, r.status === 0 ? `${lastLine(r.out, /successful/i) || 'done'} in ${seconds} s` : `exited ${r.status}: ${lastLine(r.out)}`, t1);
    this.at = to;
    this.host = dst.host;
    await dst.host.waitForGuest(new RegExp(`.*${GUEST_TAG} hb `), `a heartbeat on ${dst.name}`, this.timeoutS, dstFrom);
    await this.inGuest('guest-hb-stop', 'the heartbeat to stop', 'hb-stopped');
    await this.openShell(`console shell on ${dst.name}`);
    const beats = `${splitConsole(src.host.console.slice(hbFrom)).guest.join('\n')}\n${splitConsole(dst.host.console.slice(dstFrom)).guest.join('\n')}`;
    const pauseSeconds = pauseOf(beats);
    const here = await this.dom0(['xl domid "$DOMU_GUEST" 2>&1 </dev/null']);
    await this.must(`runs on ${dst.name}`, here.status === 0, here.status === 0 ? `xl domid on ${dst.name}: ${lastLine(here.out)}` : `xl domid on ${dst.name} exited ${here.status}: ${lastLine(here.out)}`, t0);
    const there = await this.dom0(['xl domid "$DOMU_GUEST" 2>&1 </dev/null'], src.host);
    await this.must(`gone from ${src.name}`, there.status !== 0, there.status !== 0 ? `xl domid on ${src.name}: ${lastLine(there.out) || `exit ${there.status}`}` : `still domain ${lastLine(there.out)} on ${src.name}`, t0);
    const a = parseAfter(await this.inGuest('guest-after', `the guest on ${dst.name}`));
    const newMarkers = countMarkers(splitConsole(dst.host.console.slice(dstFrom)).guest.join('\n'));
    await this.must(
      `same guest on ${dst.name}`,
      a.uptime > this.uptimeBefore && newMarkers === 0,
      `uptime ${this.uptimeBefore} s → ${a.uptime} s; ${newMarkers} ready markers on ${dst.name}'s console (a reboot would print one); pause ${pauseSeconds} s`,
      t0,
    );
    this.uptimeBefore = a.uptime;
    await this.must(`file on ${dst.name}`, a.file === this.written, `${GUEST_FILE}: ${a.file || '(unreadable)'}${a.file === this.written ? ' (written before the move)' : `, expected ${this.written}`}`, t0);
    await this.writeAgain(`on ${dst.name}`);
    if (this.expect.address !== undefined) {
      await this.must(`address on ${dst.name}`, a.addresses.includes(this.expect.address), `eth0: ${a.addresses.join(', ') || 'no IPv4 address'} (configured ${this.expect.address})`, t0);
      await this.pingFrom(0, ` (guest on ${dst.name})`);
      const home = a.pinged.find((p) => p.address === this.expect.dom0Address);
      await this.must(`ping guest → ${this.hosts[0].name} (guest on ${dst.name})`, home?.status === 0, home ? `ping ${home.address}: exit ${home.status}` : `${this.expect.dom0Address} is not in the guest's ARP table`, t0);
    }
    return { from: src.name, to: dst.name, seconds, pauseSeconds };
  }

  /** A new file on the guest's disk: writes go on where it runs now. */
  async writeAgain(where: string): Promise<void> {
    const t0 = performance.now();
    const w = parseWritten(await this.inGuest('guest-write', `a file written ${where}`));
    await this.must(`file written ${where}`, w !== undefined, w ? `${GUEST_FILE} holds ${w} (synced)` : `could not write ${GUEST_FILE}`, t0);
    this.written = w;
  }

  /** The guest reads the file written on the other host (store.disk: file, each host in turn). */
  async readFileWrittenBefore(where: string): Promise<void> {
    const t0 = performance.now();
    const a = parseAfter(await this.inGuest('guest-after', `the guest ${where}`));
    await this.must(`file ${where}`, a.file === this.written, `${GUEST_FILE}: ${a.file || '(unreadable)'}${a.file === this.written ? '' : `, expected ${this.written}`}`, t0);
  }

  /** poweroff in the guest (rcS's shutdown syncs and unmounts), then wait until the domain is gone. */
  async powerOff(): Promise<void> {
    const t0 = performance.now();
    this.ctx.progress(`poweroff in the guest on ${this.on.name}`);
    this.record(`powered off on ${this.on.name}`, true, await this.powerOffAndWait(), t0);
  }

  /** The host side's checks of the guest's disk (lab/disk-check.ts), recorded like the others. */
  async recordDisk(checks: readonly { name: string; ok: boolean; detail: string }[]): Promise<void> {
    const t0 = performance.now();
    for (const c of checks) await this.must(c.name, c.ok, c.detail, t0);
  }

  /**
   * Both dom0s flush and unmount the store, as an administrator shuts a Dom0 down: with store.disk
   * file the guest's last writes went through the dom0's loop device into the store's page cache,
   * which reaches the LUN only when it is written back.
   */
  async releaseStore(): Promise<void> {
    for (const h of this.hosts) {
      const t0 = performance.now();
      const r = await this.dom0(['sync; M=; while read -r MDEV MDIR MREST; do [ "$MDIR" = "$DOMU_STORE" ] && M=1; done < /proc/mounts; if [ -n "$M" ]; then umount "$DOMU_STORE" 2>&1 && echo "unmounted"; else echo "not mounted"; fi </dev/null'], h.host);
      await this.must(`store released on ${h.name}`, r.status === 0, lastLine(r.out) || `exit ${r.status}`, t0);
    }
  }

  /** Run dom0 commands on host `i` (fixed text; values come from its parameter files). */
  async on0(i: 0 | 1, lines: string[]): Promise<{ out: string; status: number }> {
    return this.dom0(lines, this.hosts[i].host);
  }

  /** The last written file content (what the disk check on the host side expects). */
  get lastWritten(): string | undefined {
    return this.written;
  }

  /** A failed check: its line, both dom0 consoles' tails, the guest console and xl dmesg (the guest's host). */
  override async failure(line: string): Promise<Error> {
    if (this.ctx.signal.aborted) return abortError(this.ctx.signal);
    const base = await super.failure(`${line} (guest on ${this.on.name})`);
    const tails = this.hosts.map((h) => `the last ${TAIL_LINES} lines of ${h.name}'s dom0 console:\n${h.host.tail('dom0', TAIL_LINES).join('\n') || '(empty)'}`).join('\n');
    const hint = this.hosts.map((h) => `${h.name}: ${h.host.qemu.spec.logFile}`).join('; ');
    return new DomuError(`${errorMessage(base)}\n${tails}`, { hint: `the whole consoles (Xen, dom0 and the guest's lines, "G| "): ${hint}` });
  }
}
