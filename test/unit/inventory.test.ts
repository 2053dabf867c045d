// Inventory validation (issue 6): every bad value is exit 2 (InputError) naming the file, line,
// column and key path, before anything runs.
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/core/errors.js';
import { loadDescription } from '../../src/model/description.js';

function message(text: string): string {
  try {
    loadDescription({ file: 'guest.yaml', text });
  } catch (e) {
    expect(e).toBeInstanceOf(InputError);
    return (e as Error).message;
  }
  throw new Error('no error');
}

const HOSTS = (h2: string) => `hosts:\n  - { name: test1, address: 172.16.31.1, bridge: xenbr0 }\n  - ${h2}\n`;

describe('bad inventories', () => {
  it.each([
    ['duplicate host name', HOSTS('{ name: test1, address: 172.16.31.2, bridge: xenbr0 }'), 'guest.yaml:3:13: hosts.1.name: duplicate host name "test1" (already hosts.0.name)'],
    ['bad host name', HOSTS('{ name: Test_2, address: 172.16.31.2, bridge: xenbr0 }'), 'guest.yaml:3:13: hosts.1.name: expected a host name [a-z0-9-], starting with a letter or digit, got "Test_2"'],
    ['bad address', HOSTS('{ name: test2, address: 172.16.31.256, bridge: xenbr0 }'), 'guest.yaml:3:29: hosts.1.address: expected an IPv4 address like 172.16.31.1, got "172.16.31.256"'],
    ['duplicate address', HOSTS('{ name: test2, address: 172.16.31.1, bridge: xenbr0 }'), 'guest.yaml:3:29: hosts.1.address: duplicate host address "172.16.31.1" (already hosts.0.address)'],
    ['bridge too long', HOSTS('{ name: test2, address: 172.16.31.2, bridge: xenbr0123456789ab }'), 'guest.yaml:3:50: hosts.1.bridge: expected a bridge name of 1 to 15 characters [A-Za-z0-9_.-], got "xenbr0123456789ab"'],
    ['duplicate hwaddr', HOSTS('{ name: test2, address: 172.16.31.2, bridge: xenbr0, hwaddr: 08:00:27:16:d9:aa }').replace('bridge: xenbr0 }', 'bridge: xenbr0, hwaddr: 08:00:27:16:D9:AA }'), 'guest.yaml:3:66: hosts.1.hwaddr: duplicate host hwaddr "08:00:27:16:d9:aa" (already hosts.0.hwaddr)'],
    ['memory with a unit', 'guest:\n  memory: 512M\n', 'guest.yaml:2:11: guest.memory: expected an integer number of MiB, got "512M" (write 512)'],
    ['memory too small', 'guest:\n  memory: 8\n', 'guest.yaml:2:11: guest.memory: expected at least 16 MiB, got 8'],
    ['maxmem below memory', 'guest:\n  memory: 512\n  maxmem: 256\n', 'guest.yaml:3:11: guest.maxmem: expected at least guest.memory (512 MiB), got 256'],
    ['vcpus 0', 'guest:\n  vcpus: 0\n', 'guest.yaml:2:10: guest.vcpus: expected an integer from 1 to 128, got 0'],
    ['vcpus 129', 'guest:\n  vcpus: 129\n', 'guest.yaml:2:10: guest.vcpus: expected an integer from 1 to 128, got 129'],
    ['guest name unsafe as a file name', 'guest:\n  name: ../etc\n', 'guest.yaml:2:9: guest.name: expected a guest name of up to 64 characters [a-z0-9_.-], starting with a letter or digit, got "../etc"'],
    ['multicast MAC', 'guest:\n  mac: 01:16:3e:00:00:01\n', 'guest.yaml:2:8: guest.mac: expected a unicast MAC address like 00:16:3e:12:34:56, got "01:16:3e:00:00:01"'],
    ['MAC equal to a host NIC', 'guest:\n  mac: 08:00:27:16:D9:AA\n', 'guest.yaml:2:8: guest.mac: 08:00:27:16:d9:aa is also hosts.0.hwaddr (test1): a MAC must be unique on the network'],
    ['quote in extra', "guest:\n  extra: 'console=hvc0 x=\"y\"'\n", 'guest.yaml:2:10: guest.extra: expected kernel command line text (no quotes, backslashes, # or control characters), got "console=hvc0 x=\\"y\\""'],
    ['# in root', "guest:\n  root: '/dev/xvda #ro'\n", 'guest.yaml:2:9: guest.root: expected a root device and options, e.g. "/dev/xvda ro" (no quotes, backslashes, # or control characters), got "/dev/xvda #ro"'],
    ['newline in extra', 'guest:\n  extra: "a\\nb"\n', 'guest.yaml:2:10: guest.extra: expected kernel command line text (no quotes, backslashes, # or control characters), got "a\\nb"'],
    ['bad netmask', 'network:\n  netmask: 255.0.255.0\n', 'guest.yaml:2:12: network.netmask: expected an IPv4 netmask like 255.255.0.0, got "255.0.255.0"'],
    ['bad toolstack', 'xen:\n  toolstack: xend\n', 'guest.yaml:2:14: xen.toolstack: expected one of xl, xm, got "xend"'],
    ['store path with a quote', "store:\n  path: \"/scsi'store\"\n", 'guest.yaml:2:9: store.path: expected an absolute path like /scsistore, got "/scsi\'store"'],
  ])('%s', (_what, text, want) => {
    expect(message(text).split('\n')).toContain(want);
  });
});
