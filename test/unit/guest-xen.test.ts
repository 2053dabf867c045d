// The guest as Xen starts it: xen.type (pvh with xl, pv with xm), guest.network (static, dhcp,
// none) validated against the inventory with file:line:col, the /etc/network.conf data it
// becomes, and the kernel command line with console=hvc0.
import { describe, expect, it } from 'vitest';
import { inputError } from '../helpers/errors.js';
import { loadDescription, parseSetFlag } from '../../src/model/description.js';
import { guestNetwork, netmaskPrefix, networkApplets, networkFileText } from '../../src/model/network.js';
import { xenType } from '../../src/model/schema.js';
import { guestCmdline, guestExtra } from '../../src/xen/xencfg.js';


const load = (text: string) => loadDescription({ file: 'g.yaml', text });
const error = (text: string) => inputError(() => load(text)).message;

describe('xen.type', () => {
  it('defaults to pvh with xl and pv with xm; pv may be chosen with xl', () => {
    expect(xenType(load(''))).toBe('pvh');
    expect(xenType(load('xen:\n  toolstack: xm\n'))).toBe('pv');
    expect(xenType(load('xen:\n  type: pv\n'))).toBe('pv');
    expect(xenType(load('xen:\n  toolstack: xm\n  type: pv\n'))).toBe('pv');
  });

  it('pvh with xm is an input error at xen.type; an unknown type names the choices', () => {
    expect(error('xen:\n  toolstack: xm\n  type: pvh\n')).toBe('g.yaml:3:9: xen.type: xm (xend, Xen 4.4 and earlier) has no PVH guests: use xen.type: pv, or xen.toolstack: xl');
    expect(error('xen:\n  type: hvm\n')).toBe('g.yaml:2:9: xen.type: expected one of pvh, pv, got "hvm"');
    // --set xen.toolstack=xm on a description without type: pv, no error.
    expect(xenType(loadDescription({ overrides: [parseSetFlag('xen.toolstack=xm')] }))).toBe('pv');
  });
});

describe('guest.network', () => {
  it('defaults to the reference address 172.16.31.4/16 with network.gateway as its gateway', () => {
    expect(guestNetwork(load(''))).toEqual({ mode: 'static', address: '172.16.31.4', prefix: 16, gateway: '172.16.0.1' });
    expect(guestNetwork(load('network:\n  gateway: 172.16.255.254\n'))).toMatchObject({ gateway: '172.16.255.254' });
    expect(guestNetwork(load('guest:\n  network: { address: 10.1.2.3/24, gateway: 10.1.2.1 }\n'))).toEqual({ mode: 'static', address: '10.1.2.3', prefix: 24, gateway: '10.1.2.1' });
    expect(guestNetwork(load('guest:\n  network: { address: 10.1.2.3/24, gateway: none }\n'))).toMatchObject({ gateway: null });
    expect(guestNetwork(load('guest:\n  network: dhcp\n'))).toEqual({ mode: 'dhcp' });
    expect(guestNetwork(load('guest:\n  network: none\n'))).toEqual({ mode: 'none' });
  });

  it.each([
    ['guest:\n  network: dhcpd\n', 'g.yaml:2:12: guest.network: expected dhcp, none or a mapping { address: <ip>/<prefix>, gateway: <ip> }, got "dhcpd"'],
    ['guest:\n  network: { address: 172.16.31.4 }\n', 'g.yaml:2:23: guest.network.address: expected an IPv4 address with its prefix length, like 172.16.31.4/16, got "172.16.31.4"'],
    ['guest:\n  network: { address: 172.16.31.4/33 }\n', 'g.yaml:2:23: guest.network.address: expected an IPv4 address with its prefix length, like 172.16.31.4/16, got "172.16.31.4/33"'],
    ['guest:\n  network: { address: 10.0.0.0/8, gateway: none }\n', 'g.yaml:2:23: guest.network.address: 10.0.0.0/8 is the network address of its subnet, not a host\'s (expected an IPv4 address with its prefix length, like 172.16.31.4/16)'],
    ['guest:\n  network: { address: 172.16.31.2/16 }\n', 'g.yaml:2:23: guest.network.address: 172.16.31.2 is also hosts.1.address (test2): the guest needs an address of its own'],
    ['guest:\n  network: { address: 172.16.31.3/16 }\n', 'g.yaml:2:23: guest.network.address: 172.16.31.3 is also store.server: the guest needs an address of its own'],
    ['guest:\n  network: { address: 10.1.2.3/24, gateway: 10.1.3.1 }\n', 'g.yaml:2:45: guest.network.gateway: 10.1.3.1 is outside the guest\'s subnet 10.1.2.3/24: give a gateway in it, or gateway: none'],
    ['guest:\n  network:\n    address: 10.1.2.3/24\n', 'g.yaml:3:5: guest.network: no gateway is given, and network.gateway 172.16.0.1 (the default) is outside the guest\'s subnet 10.1.2.3/24: give guest.network.gateway in it, or gateway: none'],
    ['guest:\n  network: { address: 172.16.31.9/16, gw: 172.16.0.1 }\n', 'g.yaml:2:39: guest.network.gw: unknown key "gw" in guest.network (allowed: address, gateway)'],
  ])('%j is exit 2 with file:line:col', (text, message) => {
    expect(error(text)).toBe(message);
  });

  it('a host that takes the guest\'s address is refused too (the address is the guest\'s on every host)', () => {
    const hosts = 'hosts:\n  - { name: a, address: 172.16.31.1, bridge: xenbr0 }\n  - { name: b, address: 172.16.31.4, bridge: xenbr0 }\n';
    expect(error(hosts)).toContain('guest.network.address: 172.16.31.4 is also hosts.1.address (b)');
  });

  it('becomes /etc/network.conf: KEY=value data lines, and the applets rcS needs', () => {
    const text = networkFileText(guestNetwork(load('')));
    const data = text.split('\n').filter((l) => l && !l.startsWith('#'));
    expect(data).toEqual(['mode=static', 'address=172.16.31.4/16', 'gateway=172.16.0.1']);
    expect(networkFileText({ mode: 'static', address: '10.0.0.2', prefix: 8, gateway: null }).split('\n').filter((l) => l && !l.startsWith('#'))).toEqual(['mode=static', 'address=10.0.0.2/8']);
    expect(networkFileText({ mode: 'dhcp' })).toMatch(/^mode=dhcp$/m);
    expect(networkFileText({ mode: 'none' })).toMatch(/^mode=none$/m);
    expect(networkApplets({ mode: 'dhcp' })).toEqual(['ip', 'udhcpc']);
    expect(networkApplets({ mode: 'none' })).toEqual([]);
  });
});

describe('the kernel command line', () => {
  it('has console=hvc0 (PV and PVH) unless guest.extra names a console; the lab\'s init=/bin/sh stays a choice', () => {
    expect(guestCmdline('/dev/xvda ro', 'selinux=0')).toBe('root=/dev/xvda ro console=hvc0 selinux=0');
    expect(guestCmdline('/dev/xvda ro', '')).toBe('root=/dev/xvda ro console=hvc0');
    expect(guestCmdline('/dev/xvda ro', 'selinux=0 init=/bin/sh')).toBe('root=/dev/xvda ro console=hvc0 selinux=0 init=/bin/sh');
    expect(guestExtra('console=tty0 quiet')).toBe('console=tty0 quiet');
    const d = load('');
    expect(guestCmdline(d.guest.root, d.guest.extra)).toBe('root=/dev/xvda ro console=hvc0 selinux=0');
  });
});

describe('the Dom0s netmask as a prefix (the nested dom0s bridge address)', () => {
  it('counts the ones of a dotted netmask', () => {
    expect(netmaskPrefix('255.255.0.0')).toBe(16);
    expect(netmaskPrefix('255.255.255.0')).toBe(24);
    expect(netmaskPrefix('255.255.255.252')).toBe(30);
    expect(netmaskPrefix('0.0.0.0')).toBe(0);
  });
});
