// The device table parser: the project's own rootfs-devices.txt, comments and blank lines, and
// every kind of error with its label:LINE prefix.
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { formatDeviceNode, parseDeviceTable, type DeviceNode } from '../../src/fs/devtable.js';
import { InputError } from '../../src/core/errors.js';
import { projectPath } from '../../src/core/paths.js';

/** The default table (the task's list), without line numbers. */
const DEFAULT_DEVICES: Omit<DeviceNode, 'line'>[] = [
  { path: '/dev/console', type: 'c', mode: 0o600, uid: 0, gid: 0, major: 5, minor: 1 },
  { path: '/dev/null', type: 'c', mode: 0o666, uid: 0, gid: 0, major: 1, minor: 3 },
  { path: '/dev/zero', type: 'c', mode: 0o666, uid: 0, gid: 0, major: 1, minor: 5 },
  { path: '/dev/tty', type: 'c', mode: 0o666, uid: 0, gid: 0, major: 5, minor: 0 },
  { path: '/dev/ptmx', type: 'c', mode: 0o666, uid: 0, gid: 0, major: 5, minor: 2 },
  { path: '/dev/random', type: 'c', mode: 0o666, uid: 0, gid: 0, major: 1, minor: 8 },
  { path: '/dev/urandom', type: 'c', mode: 0o666, uid: 0, gid: 0, major: 1, minor: 9 },
  { path: '/dev/hvc0', type: 'c', mode: 0o600, uid: 0, gid: 0, major: 229, minor: 0 },
  { path: '/dev/xvda', type: 'b', mode: 0o660, uid: 0, gid: 0, major: 202, minor: 0 },
  { path: '/dev/xvda1', type: 'b', mode: 0o660, uid: 0, gid: 0, major: 202, minor: 1 },
];

const strip = (nodes: DeviceNode[]) => nodes.map(({ line: _line, ...n }) => n);

function errorOf(text: string, label = 'devs.txt'): InputError {
  try {
    parseDeviceTable(text, label);
  } catch (e) {
    expect(e).toBeInstanceOf(InputError);
    return e as InputError;
  }
  throw new Error(`no error for ${JSON.stringify(text)}`);
}

describe('parseDeviceTable', () => {
  it('reads the project table: the default nodes, in order', async () => {
    const text = await readFile(projectPath('rootfs-devices.txt'), 'utf8');
    const nodes = parseDeviceTable(text, 'rootfs-devices.txt');
    expect(strip(nodes)).toEqual(DEFAULT_DEVICES);
    // line numbers point at the table's lines
    const lines = text.split('\n');
    for (const n of nodes) expect(lines[n.line - 1]).toMatch(new RegExp(`^${n.path}\\s`));
  });

  it('ignores comments, trailing comments, blank lines, CRLF and extra whitespace', () => {
    const text = '# header\n\n   \n\t/dev/null c 0666 0 0 1 3   # the bit bucket\r\n/dev/sda\tb\t660\t0\t6\t8\t0\n#/dev/zero c 0666 0 0 1 5\n';
    const nodes = parseDeviceTable(text, 't');
    expect(nodes).toEqual([
      { path: '/dev/null', type: 'c', mode: 0o666, uid: 0, gid: 0, major: 1, minor: 3, line: 4 },
      { path: '/dev/sda', type: 'b', mode: 0o660, uid: 0, gid: 6, major: 8, minor: 0, line: 5 },
    ]);
    expect(parseDeviceTable('', 'empty')).toEqual([]);
  });

  it('accepts the limits: mode 07777, major 4095, minor 1048575, large ids', () => {
    const [n] = parseDeviceTable('/dev/x c 7777 4294967294 65534 4095 1048575\n', 't');
    expect(n).toMatchObject({ mode: 0o7777, uid: 4294967294, gid: 65534, major: 4095, minor: 1048575 });
    expect(formatDeviceNode(n as DeviceNode)).toBe('/dev/x c 7777 4294967294 65534 4095 1048575');
    expect(formatDeviceNode(parseDeviceTable('/dev/null c 666 0 0 1 3', 't')[0] as DeviceNode)).toBe('/dev/null c 0666 0 0 1 3');
  });

  const cases: [string, string, RegExp][] = [
    ['too few fields', '/dev/null c 0666 0 0 1', /^devs\.txt:2: expected 7 fields \(path type mode uid gid major minor\), got 6/],
    ['too many fields', '/dev/null c 0666 0 0 1 3 x', /^devs\.txt:2: expected 7 fields .*got 8/],
    ['type not c/b', '/dev/null p 0666 0 0 1 3', /^devs\.txt:2: type "p" of \/dev\/null is not c \(character\) or b \(block\)/],
    ['mode not octal', '/dev/null c 0668 0 0 1 3', /^devs\.txt:2: mode "0668" of \/dev\/null is not an octal number/],
    ['mode not a number', '/dev/null c rw-rw-rw- 0 0 1 3', /^devs\.txt:2: mode "rw-rw-rw-" of \/dev\/null is not an octal/],
    ['mode > 07777', '/dev/null c 17777 0 0 1 3', /^devs\.txt:2: mode 17777 of \/dev\/null is larger than 07777/],
    ['mode too long', '/dev/null c 000666 0 0 1 3', /^devs\.txt:2: mode "000666" of \/dev\/null is not an octal/],
    ['major out of range', '/dev/null c 0666 0 0 4096 3', /^devs\.txt:2: major 4096 of \/dev\/null is out of range \(0 to 4095\)/],
    ['minor out of range', '/dev/null c 0666 0 0 1 1048576', /^devs\.txt:2: minor 1048576 of \/dev\/null is out of range \(0 to 1048575\)/],
    ['negative minor', '/dev/null c 0666 0 0 1 -3', /^devs\.txt:2: minor "-3" of \/dev\/null is not a decimal number/],
    ['hex major', '/dev/null c 0666 0 0 0x1 3', /^devs\.txt:2: major "0x1" of \/dev\/null is not a decimal number/],
    ['uid out of range', '/dev/null c 0666 4294967295 0 1 3', /^devs\.txt:2: uid 4294967295 of \/dev\/null is out of range/],
    ['gid not a number', '/dev/null c 0666 0 root 1 3', /^devs\.txt:2: gid "root" of \/dev\/null is not a decimal number/],
    ['relative path', 'dev/null c 0666 0 0 1 3', /^devs\.txt:2: path "dev\/null" is not absolute/],
    ['path with ..', '/dev/../etc/null c 0666 0 0 1 3', /^devs\.txt:2: path "\/dev\/..\/etc\/null" contains \.\./],
    ['path with //', '/dev//null c 0666 0 0 1 3', /^devs\.txt:2: path "\/dev\/\/null" is not a plain path/],
    ['path /', '/ c 0666 0 0 1 3', /^devs\.txt:2: path "\/" is not a plain path/],
    ['path with a control character', '/dev/nu\u0001ll c 0666 0 0 1 3', /^devs\.txt:2: path .* contains whitespace or control characters/],
    ['duplicate path', '/dev/zero c 0666 0 0 1 5', /^devs\.txt:2: duplicate path \/dev\/zero \(already on line 1\)/],
  ];
  it.each(cases)('%s → InputError with the line number', (_name, line, re) => {
    const e = errorOf(`/dev/zero c 0666 0 0 1 5\n${line}\n/dev/tty c 0666 0 0 5 0\n`);
    expect(e.message).toMatch(re);
    expect(e.exitCode).toBe(2);
    expect(e.hint).toMatch(/path type mode uid gid major minor/);
  });

  it('whitespace inside a path shows as a wrong field count; a # starts a comment even there', () => {
    expect(errorOf('/dev/my null c 0666 0 0 1 3').message).toMatch(/^devs\.txt:1: expected 7 fields .*got 8/);
    expect(errorOf('/dev/a#b c 0666 0 0 1 3').message).toMatch(/^devs\.txt:1: expected 7 fields .*got 1/);
  });

  it('counts lines from 1, comments and blanks included, and uses the label', () => {
    expect(errorOf('# one\n\n/dev/null c 0666 0 0 1 3\n/dev/x q 0 0 0 0 0\n', 'rootfs-devices.txt').message).toMatch(/^rootfs-devices\.txt:4: type "q"/);
  });
});
