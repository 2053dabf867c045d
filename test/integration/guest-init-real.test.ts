// The guest's boot scripts for real, with the real static busybox and the project's skel staged by
// the rootfs stage, the guest's own /bin/sh running them chrooted into that tree.
//
// rcS bringing eth0 up from the /etc/network.conf a description gives, in a network namespace of
// its own (ip netns; a veth pair stands in for xen-netfront's eth0), with UTS, mount and PID
// namespaces (rcS sets the hostname and mounts /proc and /sys; udhcpc and udhcpd die with the
// namespace's init). Checks: static address and default route, DHCP through busybox udhcpc and its
// default script (udhcpd serving on the other end), none, and a missing eth0 reported without a
// hang; every time the ready marker is rcS's last line.
//
// etc/rc.d/hvc0-shell's decision (one shell per terminal): a login shell on hvc0 only when hvc0
// is not the console, i.e. not the last name in /sys/class/tty/console/active (the kernel's ABI:
// the last entry is the device behind /dev/console); here that file is a plain file of the
// chrooted tree and hvc0 a character device made there. Needs root (namespaces, chroot, mknod).
import { cp, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';
import { projectPath } from '../../src/core/paths.js';
import { loadDescription } from '../../src/model/description.js';
import { guestNetwork, networkApplets, networkFileText } from '../../src/model/network.js';
import { rootfsStage } from '../../src/stages/rootfs.js';
import { makeTestContext, tempDir, type TestContext } from '../helpers/context.js';
import { getStaticBusybox, type StaticBusybox } from '../helpers/static-busybox.js';

const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
const root = process.getuid?.() === 0;
let dir: string;
let busybox: StaticBusybox;
const contexts: TestContext[] = [];
const namespaces: string[] = [];

beforeAll(async () => {
  dir = await tempDir('domu-guest-net-');
  busybox = await getStaticBusybox();
}, 300_000);
afterAll(async () => {
  for (const ns of namespaces) await run(env, 'ip', ['netns', 'del', ns], { okExitCodes: [0, 1] });
  for (const c of contexts) await c.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The guest root for `yaml`, staged by the rootfs stage; /dev/null and /dev/console as files. */
async function guestRoot(name: string, yaml: string): Promise<string> {
  const desc = loadDescription({ text: yaml });
  const net = guestNetwork(desc);
  const ctx = await makeTestContext();
  contexts.push(ctx);
  const out = await rootfsStage(
    {
      installTree: busybox.installTree,
      skel: projectPath('rootfs-skel'),
      deviceTable: projectPath('rootfs-devices.txt'),
      guest: desc.guest,
      network: { text: networkFileText(net), applets: networkApplets(net) },
    },
    ctx,
  );
  const r = join(dir, name);
  await cp(out.staging, r, { recursive: true, verbatimSymlinks: true });
  // The image stage makes the device nodes; here plain files: rcS then leaves /dev alone and its
  // ready marker lands in dev/console.
  await writeFile(join(r, 'dev/null'), '');
  await writeFile(join(r, 'dev/console'), '');
  return r;
}

/** A fresh network namespace with eth0 (and its peer eth1, for a DHCP server). */
async function namespace(name: string, withEth0 = true): Promise<string> {
  const ns = `domu-t${process.pid}-${name}`;
  await run(env, 'ip', ['netns', 'add', ns]);
  namespaces.push(ns);
  await run(env, 'ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  if (withEth0) {
    await run(env, 'ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1']);
    await run(env, 'ip', ['-n', ns, 'link', 'set', 'eth1', 'up']);
  }
  return ns;
}

/** The guest's sh, chrooted, in namespace `ns`: `script` (rcS and what is checked after it). */
async function inGuest(ns: string, guest: string, script: string) {
  return run(env, 'ip', ['netns', 'exec', ns, 'unshare', '--uts', '--mount', '--pid', '--fork', '--', 'chroot', guest, '/bin/sh', '-c', script], { timeoutMs: 60_000 });
}

const AFTER = 'echo "== addr"; ip -4 addr show dev eth0; echo "== route"; ip route';

describe.skipIf(!root)('rcS brings eth0 up from /etc/network.conf (real busybox, chroot, network namespace)', () => {
  it('static (the default): the address with its prefix and the default route via network.gateway; marker last', async () => {
    const guest = await guestRoot('static', '');
    expect((await readFile(join(guest, 'etc/network.conf'), 'utf8')).split('\n').filter((l) => /^\w+=/.test(l))).toEqual(['mode=static', 'address=172.16.31.4/16', 'gateway=172.16.0.1']);
    const ns = await namespace('static');
    const r = await inGuest(ns, guest, `/etc/rc.d/rcS; ${AFTER}`);
    expect(r.stdout).toContain('rcS: eth0 172.16.31.4/16');
    expect(r.stdout).toMatch(/inet 172\.16\.31\.4\/16 /);
    expect(r.stdout).toMatch(/^default via 172\.16\.0\.1 dev eth0/m);
    expect(await readFile(join(guest, 'dev/console'), 'utf8')).toBe('domu-guest-ready\n');
    // Run again by hand (init=/bin/sh): the same address once, no error.
    const again = await inGuest(ns, guest, `/etc/rc.d/rcS; /etc/rc.d/rcS; ${AFTER}`);
    expect(again.stderr).not.toMatch(/rcS:/);
    expect(again.stdout.match(/inet 172\.16\.31\.4\//g)).toHaveLength(1);
  }, 120_000);

  it('dhcp: busybox udhcpc with the shipped default script takes a lease from udhcpd', async () => {
    const guest = await guestRoot('dhcp', 'guest:\n  network: dhcp\n');
    await writeFile(
      join(guest, 'etc/udhcpd.conf'),
      'start 10.9.0.50\nend 10.9.0.60\ninterface eth1\nlease_file /tmp/udhcpd.leases\npidfile /tmp/udhcpd.pid\noption subnet 255.255.255.0\noption router 10.9.0.1\n',
    );
    const ns = await namespace('dhcp');
    await run(env, 'ip', ['-n', ns, 'addr', 'add', '10.9.0.1/24', 'dev', 'eth1']);
    // mount /proc first for udhcpd's sake (rcS would too); udhcpd and udhcpc die with the PID namespace.
    const r = await inGuest(ns, guest, `mount -t proc proc /proc; touch /tmp/udhcpd.leases; udhcpd /etc/udhcpd.conf; /etc/rc.d/rcS; ${AFTER}`);
    expect(r.stdout).toMatch(/udhcpc: eth0 10\.9\.0\.5\d\/24 via 10\.9\.0\.1/);
    expect(r.stdout).toMatch(/inet 10\.9\.0\.5\d\/24 /);
    expect(r.stdout).toMatch(/^default via 10\.9\.0\.1 dev eth0/m);
    expect(await readFile(join(guest, 'dev/console'), 'utf8')).toBe('domu-guest-ready\n');
  }, 120_000);

  it('none: eth0 is left alone', async () => {
    const guest = await guestRoot('none', 'guest:\n  network: none\n');
    const ns = await namespace('none');
    const r = await inGuest(ns, guest, `/etc/rc.d/rcS; ${AFTER}`);
    expect(r.stdout).not.toMatch(/inet /);
    expect(r.stdout).not.toMatch(/default via/);
    expect(r.stderr).not.toMatch(/rcS:/);
  }, 120_000);

  it('no eth0 (as under QEMU): one line on the console, no wait, and the marker still comes last', async () => {
    const guest = await guestRoot('no-eth0', '');
    const ns = await namespace('no-eth0', false);
    const started = performance.now();
    const r = await inGuest(ns, guest, '/etc/rc.d/rcS');
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(r.stderr.trim()).toBe('rcS: no eth0: the network (static) is not configured');
    expect(await readFile(join(guest, 'dev/console'), 'utf8')).toBe('domu-guest-ready\n');
  }, 120_000);
});

describe.skipIf(!root)('hvc0-shell: a login shell on hvc0 only when hvc0 is not the console', () => {
  /**
   * Run hvc0-shell for at most 3 s with `active` as the console list; hvc0 a character device
   * (1:3, reads end at once) or absent. Exit 0: a shell ran on hvc0 and ended; 124: still waiting.
   */
  async function hvc0Shell(name: string, active: string, hvc0: boolean): Promise<number> {
    const guest = await guestRoot(name, 'guest:\n  network: none\n');
    await mkdir(join(guest, 'sys/class/tty/console'), { recursive: true });
    await writeFile(join(guest, 'sys/class/tty/console/active'), `${active}\n`);
    if (hvc0) await run(env, 'mknod', [join(guest, 'dev/hvc0'), 'c', '1', '3']);
    // GNU timeout signals the whole process group: the script and its sleep.
    const r = await run(env, 'timeout', ['3', 'chroot', guest, '/etc/rc.d/hvc0-shell'], { okExitCodes: [0, 124] });
    if (!hvc0) await expect(stat(join(guest, 'dev/hvc0'))).rejects.toThrow(/ENOENT/); // nothing made in its place
    return r.exitCode;
  }

  it('hvc0 is the console (console=hvc0, as under Xen): no second shell there, it waits', async () => {
    expect(await hvc0Shell('hvc0-console', 'hvc0', true)).toBe(124);
    expect(await hvc0Shell('hvc0-last', 'ttyS0 hvc0', true)).toBe(124);
  }, 60_000);

  it('hvc0 is a terminal of its own (another console last): a login shell runs on it', async () => {
    expect(await hvc0Shell('hvc0-own', 'hvc0 tty0', true)).toBe(0);
  }, 60_000);

  it('no hvc0 (QEMU, not Xen): it waits quietly and creates nothing', async () => {
    expect(await hvc0Shell('no-hvc0', 'ttyS0', false)).toBe(124);
  }, 60_000);
});

describe('the rootfs stage refuses a busybox without the applets rcS needs', () => {
  it('dhcp without udhcpc is exit 2 naming the applet and the way out', async () => {
    const tree = join(dir, 'install-without-udhcpc');
    await cp(busybox.installTree, tree, { recursive: true, verbatimSymlinks: true });
    await rm(join(tree, 'sbin', 'udhcpc'), { force: true });
    await mkdir(join(tree, 'usr'), { recursive: true });
    const ctx = await makeTestContext();
    contexts.push(ctx);
    const e = await rootfsStage(
      { installTree: tree, skel: projectPath('rootfs-skel'), deviceTable: projectPath('rootfs-devices.txt'), guest: loadDescription({}).guest, network: { text: networkFileText({ mode: 'dhcp' }), applets: networkApplets({ mode: 'dhcp' }) } },
      ctx,
    ).then(() => undefined, (x: unknown) => x as Error & { exitCode?: number });
    expect(e?.message).toBe('the busybox build has no udhcpc applet, which /etc/rc.d/rcS needs for guest.network');
    expect(e?.exitCode).toBe(2);
  });
});
