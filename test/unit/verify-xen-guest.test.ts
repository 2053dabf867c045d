// The answers of a guest on real Xen as verify-xen reads them. The lines are what busybox prints
// for the typed checks (ip addr, /proc/mounts, /proc/uptime); the e2e test gets them from a real
// guest. Here: the parsing and the verdicts, including the ones that must fail.
import { describe, expect, it } from 'vitest';
import { GUEST_TAG as T, parseAfter, parseGuestFacts, parsePings, parseWritten, pauseOf } from '../../src/stages/verify-xen-guest.js';

const lines = (...l: string[]) => l.map((x) => `${T} ${x}`).join('\n');

describe('the guest facts', () => {
  const text = [
    'stty -echo; echo "$P applets $(busybox --list | wc -l)"', // the echoed command never matches: it has no tag
    lines(
      'applets 354',
      'release 6.1.0-41-amd64',
      'root rootfs rootfs rw',
      'root /dev/xvda ext4 ro,relatime',
      'module xen_netfront loaded',
      'ip 2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc pfifo_fast qlen 1000',
      'ip link/ether 00:16:3e:4f:2a:01 brd ff:ff:ff:ff:ff:ff',
      'ip inet 172.16.31.4/16 brd 172.16.255.255 scope global eth0',
      'uptime 27.31',
      'end',
    ),
  ].join('\n');

  it('reads applets, release, the mount in use on /, module verdicts, eth0 and uptime', () => {
    const f = parseGuestFacts(text, ['xen_netfront']);
    expect(f.applets).toBe(354);
    expect(f.release).toBe('6.1.0-41-amd64');
    expect(f.root).toEqual({ device: '/dev/xvda', type: 'ext4', options: 'ro,relatime' });
    expect(f.modules).toEqual([{ name: 'xen_netfront', verdict: 'loaded', detail: 'in /proc/modules' }]);
    expect(f.moduleNotes).toEqual([]);
    expect(f.eth0).toBe('BROADCAST,MULTICAST,UP,LOWER_UP');
    expect(f.addresses).toEqual(['172.16.31.4/16']);
    expect(f.uptime).toBeCloseTo(27.31);
  });

  it('under Xen, "No such device" is a failure, and a module build.json lists but /etc/modules lacks is a note', () => {
    const f = parseGuestFacts(lines('module xen_netfront refused 1 insmod: can\'t insert \'xen-netfront.ko\': No such device', 'end'), ['xen_netfront', 'xen_blkfront']);
    expect(f.modules[0]!.verdict).toBe('failed');
    expect(f.moduleNotes).toEqual(["build.json lists module xen_blkfront, which the guest's /etc/modules does not"]);
  });

  it('a missing eth0 leaves no address and no state', () => {
    const f = parseGuestFacts(lines('ip ip: can\'t find device \'eth0\'', 'end'), []);
    expect(f.eth0).toBeUndefined();
    expect(f.addresses).toEqual([]);
  });
});

describe('pings, the written file, the state after a move', () => {
  it('reads ping statuses by address', () => {
    expect(parsePings(lines('ping 172.16.31.1 0', 'ping 172.16.31.9 1', 'pinged 2')).pinged).toEqual([
      { address: '172.16.31.1', status: 0 },
      { address: '172.16.31.9', status: 1 },
    ]);
  });
  it('reads the UUID written, or nothing when the write failed', () => {
    expect(parseWritten(lines('wrote 0f8c2a4e-3b1d-4c55-9a77-2a6d1f0e9b10'))).toBe('0f8c2a4e-3b1d-4c55-9a77-2a6d1f0e9b10');
    expect(parseWritten(lines('wrote-failed'))).toBeUndefined();
  });
  it('reads uptime, the file and the address after the move', () => {
    const a = parseAfter(lines('uptime 61.02', 'file 0f8c2a4e', '2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc pfifo_fast qlen 1000'.replace(/^/, 'ip '), 'ip inet 172.16.31.4/16 scope global eth0', 'ip valid_lft forever preferred_lft forever', 'ping 172.16.31.1 0', 'end'));
    expect(a).toEqual({ uptime: 61.02, file: '0f8c2a4e', addresses: ['172.16.31.4/16'], pinged: [{ address: '172.16.31.1', status: 0 }] });
    expect(parseAfter(lines('uptime 1', 'ip ip: can\'t find device \'eth0\'', 'end')).addresses).toEqual([]);
  });
});

describe('the pause from the heartbeats', () => {
  it('is the longest gap in the guest uptime less the 0.2 s interval', () => {
    expect(pauseOf(lines('hb 40.00', 'hb 40.20', 'hb 40.41', 'hb 46.01', 'hb 46.21'))).toBe(5.4);
  });
  it('is NaN with fewer than two heartbeats', () => {
    expect(pauseOf(lines('hb 40.00'))).toBeNaN();
  });
});
