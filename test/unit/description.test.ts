import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { inputError } from '../helpers/errors.js';
import { InputError } from '../../src/core/errors.js';
import { formatSize, parseSize } from '../../src/core/size.js';
import {
  DescriptionError,
  flagOverride,
  loadDescription,
  parseSetFlag,
  type Override,
} from '../../src/model/description.js';
import { DEFAULTS, descriptionSchema } from '../../src/model/schema.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const FIX = join(ROOT, 'test/fixtures/descriptions');
const fixture = (name: string) => join(FIX, name);


/** Line `n` (1-based) of a fixture, to check that asserted positions point at what we think. */
function lineOf(name: string, n: number): string {
  return readFileSync(fixture(name), 'utf8').split('\n')[n - 1]!;
}

/** The text at line:col of a fixture. */
function at(name: string, line: number, col: number): string {
  return lineOf(name, line).slice(col - 1);
}

describe('parseSize / formatSize', () => {
  it('reads binary multiples, optional iB/B, and plain bytes', () => {
    for (const t of ['1G', '1024M', '1073741824', '1GiB', '1GB', '1g', 1073741824, '1048576K', ' 1G ']) {
      expect(parseSize(t), String(t)).toBe(1073741824);
    }
    expect(parseSize('512K')).toBe(524288);
    expect(parseSize('1T')).toBe(2 ** 40);
    expect(parseSize('4096B')).toBe(4096);
    expect(parseSize('1.5G')).toBe(1610612736);
  });

  it('rejects what is not a size, with a clear message', () => {
    expect(() => parseSize('1.5Q')).toThrow('"1.5Q" is not a size: use a number of bytes or K/M/G/T, e.g. 1G');
    for (const t of ['', 'G', '-1G', '1 G B', 'banana', '0.1G']) expect(() => parseSize(t), t).toThrow(/is not a size/);
    expect(() => parseSize(1.5)).toThrow(/not a size/);
    expect(() => parseSize(-4)).toThrow(/not a size/);
  });

  it('formats sizes so that parseSize reads them back', () => {
    expect(formatSize(1073741824)).toBe('1G');
    expect(formatSize(1536 * 2 ** 20)).toBe('1536M');
    expect(formatSize(4096)).toBe('4K');
    expect(formatSize(100)).toBe('100B');
    for (const b of [2 ** 40, 3 * 2 ** 30, 16 * 2 ** 20, 1024, 0]) expect(parseSize(formatSize(b))).toBe(b);
  });
});

describe('defaults', () => {
  it('are the reference lab of design.md', () => {
    expect(DEFAULTS).toEqual({
      guest: {
        name: 'busybox',
        memory: 512,
        vcpus: 1,
        root: '/dev/xvda ro',
        extra: 'selinux=0',
        on_crash: 'destroy',
        on_reboot: 'destroy',
        on_poweroff: 'destroy',
        network: { address: '172.16.31.4/16' },
      },
      busybox: { version: '1.22.1', fallback: 'distro', fragment: 'busybox-config/static.fragment', libc: 'glibc', mirrors: [] },
      image: { file: 'busybox.img', size: 1073741824, populate: 'auto', skel: 'rootfs-skel' },
      kernel: { image: 'auto', modules: 'auto', ramdisk: 'generate', ship: true, package: 'linux-image-amd64' },
      modules: ['xen-netfront'],
      store: { path: '/scsistore', server: '172.16.31.3', iqn: 'iqn.2015-02.com.stu31:t1', initiators: '172.16.31.0/24', backing_store: '/dev/sda3', disk: 'file', disk_backing_store: '/dev/sda4' },
      xen: { toolstack: 'xl', relocation_port: 8002 },
      network: { netmask: '255.255.0.0', gateway: '172.16.0.1' },
      hosts: [
        { name: 'test1', address: '172.16.31.1', bridge: 'xenbr0', nic: 'eth0', hwaddr: '08:00:27:16:d9:aa' },
        { name: 'test2', address: '172.16.31.2', bridge: 'xenbr0', nic: 'eth0', hwaddr: '08:00:27:6a:9d:57' },
      ],
    });
    expect(descriptionSchema.parse({})).toEqual(DEFAULTS);
  });

  it('no file and no flags gives the defaults (a fresh copy)', () => {
    const d = loadDescription({});
    expect(d).toEqual(DEFAULTS);
    d.guest.memory = 1024;
    expect(DEFAULTS.guest.memory).toBe(512);
  });

  it('the top-level guest.yaml loads to exactly the defaults', () => {
    expect(loadDescription({ file: join(ROOT, 'guest.yaml') })).toEqual(DEFAULTS);
  });

  it('an empty file and empty sections take the defaults', () => {
    expect(loadDescription({ file: 'g.yaml', text: '' })).toEqual(DEFAULTS);
    expect(loadDescription({ file: 'g.yaml', text: '# nothing here\n' })).toEqual(DEFAULTS);
    expect(loadDescription({ file: fixture('empty-sections.yaml') })).toEqual(DEFAULTS);
  });
});

describe('merging: defaults ← file ← flags', () => {
  it('keeps the defaults of keys the file does not set (deep merge)', () => {
    const d = loadDescription({ file: fixture('partial.yaml') });
    expect(d.busybox).toEqual({ ...DEFAULTS.busybox, version: '1.35.0' });
    expect(d.guest).toEqual({ ...DEFAULTS.guest, memory: 1024 });
    expect(d.image).toEqual(DEFAULTS.image);
    expect(d.hosts).toEqual(DEFAULTS.hosts);
  });

  it('a flag wins over the file', () => {
    const d = loadDescription({
      file: fixture('partial.yaml'),
      overrides: [flagOverride('--busybox-version', ['busybox', 'version'], '1.22.1')],
    });
    expect(d.busybox.version).toBe('1.22.1');
    expect(d.guest.memory).toBe(1024); // from the file
    expect(d.busybox.fragment).toBe(DEFAULTS.busybox.fragment); // from the defaults
  });

  it('a flag sets a key the file does not have, keeping its siblings', () => {
    const d = loadDescription({ file: fixture('partial.yaml'), overrides: [parseSetFlag('image.size=2G'), parseSetFlag('guest.vcpus=2')] });
    expect(d.image).toEqual({ ...DEFAULTS.image, size: 2 * 2 ** 30 });
    expect(d.guest).toEqual({ ...DEFAULTS.guest, memory: 1024, vcpus: 2 });
  });

  it('the last flag wins; lists are replaced whole; indexes reach into lists', () => {
    const d = loadDescription({
      overrides: [
        parseSetFlag('busybox.version=1.35.0'),
        parseSetFlag('busybox.version=1.36.1'),
        parseSetFlag('modules=[xen-blkfront, ext4]'),
        parseSetFlag('hosts.1.bridge=xenbr1'),
        parseSetFlag('busybox.mirrors=[https://mirror.example/busybox/]'),
      ],
    });
    expect(d.busybox.version).toBe('1.36.1');
    expect(d.modules).toEqual(['xen-blkfront', 'ext4']);
    expect(d.hosts[1]).toEqual({ name: 'test2', address: '172.16.31.2', bridge: 'xenbr1', nic: 'eth0', hwaddr: '08:00:27:6a:9d:57' });
    expect(d.hosts[0]).toEqual(DEFAULTS.hosts[0]);
    expect(d.busybox.mirrors).toEqual(['https://mirror.example/busybox']);
  });

  it('a mapping given as a flag value is merged key by key', () => {
    const d = loadDescription({ file: fixture('partial.yaml'), overrides: [parseSetFlag('guest={vcpus: 4}')] });
    expect(d.guest).toEqual({ ...DEFAULTS.guest, memory: 1024, vcpus: 4 });
  });
});

describe('sizes', () => {
  it.each(['1G', '1024M', '1073741824', '1GiB'])('image.size %s is 1073741824 bytes', (size) => {
    expect(loadDescription({ file: 'g.yaml', text: `image:\n  size: ${size}\n` }).image.size).toBe(1073741824);
    expect(loadDescription({ overrides: [parseSetFlag(`image.size=${size}`)] }).image.size).toBe(1073741824);
  });

  it('1.5Q is an error with the key path and the line', () => {
    const file = fixture('bad-size.yaml');
    const e = inputError(() => loadDescription({ file }));
    expect(e.message).toBe(`${file}:3:9: image.size: "1.5Q" is not a size: use a number of bytes or K/M/G/T, e.g. 1G`);
    expect(at('bad-size.yaml', 3, 9)).toBe('1.5Q');
  });

  it('must be whole 4 KiB blocks and at least 16 MiB', () => {
    expect(inputError(() => loadDescription({ overrides: [parseSetFlag('image.size=1000000')] })).message).toMatch(
      /^flag --set image\.size=1000000: image\.size: expected at least 16M/,
    );
    expect(inputError(() => loadDescription({ overrides: [parseSetFlag('image.size=16777217')] })).message).toMatch(
      /image\.size: expected a multiple of 4096 bytes/,
    );
  });
});

describe('errors name the file, line, column and key path', () => {
  it('memory "512M" says to write an integer number of MiB', () => {
    const file = fixture('bad-memory.yaml');
    const e = inputError(() => loadDescription({ file }));
    expect(e.message).toBe(`${file}:3:11: guest.memory: expected an integer number of MiB, got "512M" (write 512)`);
    expect(at('bad-memory.yaml', 3, 11)).toBe('"512M"');
  });

  it('unknown keys, nested and at the top level, point at the key itself', () => {
    const file = fixture('unknown-keys.yaml');
    const e = inputError(() => loadDescription({ file }));
    const lines = e.message.split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toBe(
      `${file}:3:3: guest.memroy: unknown key "memroy" in guest (allowed: name, memory, maxmem, vcpus, root, extra, mac, on_crash, on_reboot, on_poweroff, network); did you mean "memory"?`,
    );
    expect(at('unknown-keys.yaml', 3, 3)).toMatch(/^memroy:/);
    expect(lines[1]).toBe(`${file}:6:1: colour: unknown key "colour" at the top level (allowed: guest, busybox, image, kernel, modules, store, xen, network, hosts)`);
    expect(at('unknown-keys.yaml', 6, 1)).toMatch(/^colour:/);
  });

  it('wrong types say what was expected and what was given', () => {
    const file = fixture('wrong-type.yaml');
    const lines = inputError(() => loadDescription({ file })).message.split('\n');
    expect(lines).toEqual([
      `${file}:2:10: guest.vcpus: expected an integer from 1 to 128, got "two"`,
      `${file}:3:10: busybox: expected a mapping of busybox settings (version, fallback, fragment, config, libc, cross_compile, mirrors), got "1.22.1"`,
      `${file}:4:10: modules: expected a list of module names, got "xen-netfront" (write [xen-netfront] for a list of one)`,
    ]);
    expect(at('wrong-type.yaml', 2, 10)).toBe('two');
    expect(at('wrong-type.yaml', 4, 10)).toBe('xen-netfront');
  });

  it('a YAML syntax error gives the file, line and yaml\'s message', () => {
    const file = fixture('syntax-error.yaml');
    const e = inputError(() => loadDescription({ file }));
    expect(e.message).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:4:\\d+: YAML syntax error: .+`));
    expect(lineOf('syntax-error.yaml', 4)).toBe(' vcpus: 1');
    expect(inputError(() => loadDescription({ file: 'g.yaml', text: 'guest:\n  memory: 1\n  memory: 2\n' })).message).toBe(
      'g.yaml:3:3: YAML syntax error: Map keys must be unique',
    );
  });

  it('a duplicate host name is reported at hosts.1.name, on its line', () => {
    const file = fixture('duplicate-host.yaml');
    const e = inputError(() => loadDescription({ file }));
    expect(e.message).toBe(`${file}:5:11: hosts.1.name: duplicate host name "test1" (already hosts.0.name)`);
    expect(at('duplicate-host.yaml', 5, 11)).toBe('test1');
  });

  it('a top level that is not a mapping is an error', () => {
    const file = fixture('not-a-mapping.yaml');
    expect(inputError(() => loadDescription({ file })).message).toMatch(
      new RegExp(`:1:1: the build description must be a mapping of sections \\(guest, busybox, image, kernel, modules, store, xen, network, hosts\\), got a list$`),
    );
    expect(inputError(() => loadDescription({ file: 'g.yaml', text: 'hello\n' })).message).toMatch(/^g\.yaml:1:1: .*got "hello"$/);
  });

  it('collects every problem, in file order, one per line', () => {
    const file = fixture('many-errors.yaml');
    const e = inputError(() => loadDescription({ file }));
    expect(e).toBeInstanceOf(DescriptionError);
    const issues = (e as DescriptionError).issues;
    expect(issues.map((i) => [i.path, i.line])).toEqual([
      ['guest.name', 2],
      ['guest.memory', 3],
      ['guest.on_crash', 4],
      ['busybox.version', 6],
      ['busybox.libc', 7],
      ['image.file', 9],
      ['image.size', 10],
      ['kernel.image', 12],
      ['store.server', 14],
      ['store.iqn', 15],
      ['store.initiators', 16],
      ['hosts.0.bridge', 18],
      ['hosts.1.address', 19],
      ['hosts.1.extra', 19],
    ]);
    for (const i of issues) expect(lineOf('many-errors.yaml', i.line!), i.path).toContain(i.path.split('.').pop()!);
    const lines = e.message.split('\n');
    expect(lines).toHaveLength(issues.length);
    expect(lines[0]).toMatch(/many-errors\.yaml:2:9: guest\.name: expected a guest name .*, got "Busybox"$/);
    expect(lines[1]).toMatch(/:3:11: guest\.memory: expected at least 16 MiB, got 8$/);
    expect(e.message).toContain('hosts.1.address: duplicate host address "172.16.31.1" (already hosts.0.address)');
    expect(e.message).toContain('hosts.1.extra: unknown key "extra" in hosts.1 (allowed: name, address, bridge, nic, hwaddr, store_path, kernel, ramdisk)');
  });

  it('a missing host key points at the host entry', () => {
    const text = 'hosts:\n  - name: test1\n    address: 172.16.31.1\n';
    expect(inputError(() => loadDescription({ file: 'g.yaml', text })).message).toBe(
      'g.yaml:2:5: hosts.0.bridge: missing: expected a bridge name of 1 to 15 characters [A-Za-z0-9_.-]',
    );
  });

  it('an empty list value points at its key and suggests []', () => {
    expect(inputError(() => loadDescription({ file: 'g.yaml', text: 'modules:\n' })).message).toBe(
      'g.yaml:1:1: modules: expected a list of module names, got an empty value (write [] for none)',
    );
  });

  it('a missing file is an InputError with a hint', () => {
    const e = inputError(() => loadDescription({ file: 'nowhere/guest.yaml' }));
    expect(e.message).toBe('cannot read build description nowhere/guest.yaml: no such file');
    expect(e.hint).toMatch(/--config/);
  });

});

describe('flags', () => {
  it('parses --set key.path=value with YAML scalars and flow lists', () => {
    expect(parseSetFlag('image.size=2G')).toEqual({ path: ['image', 'size'], value: '2G', flag: '--set image.size=2G' });
    expect(parseSetFlag('guest.memory=1024')).toEqual({ path: ['guest', 'memory'], value: 1024, flag: '--set guest.memory=1024' });
    expect(parseSetFlag('busybox.version=1.35.0').value).toBe('1.35.0');
    expect(parseSetFlag('modules=[a,b]').value).toEqual(['a', 'b']);
    expect(parseSetFlag('hosts.1.bridge=xenbr1').path).toEqual(['hosts', 1, 'bridge']);
    expect(parseSetFlag('guest.extra=console=hvc0 quiet').value).toBe('console=hvc0 quiet');
  });

  it('a malformed --set is an InputError', () => {
    for (const t of ['image.size', '=2G', 'a..b=1', 'image size=2G']) {
      expect(inputError(() => parseSetFlag(t)).message, t).toBe(`flag --set ${t}: expected key.path=value`);
    }
    expect(inputError(() => parseSetFlag('modules=[a')).message).toMatch(/^flag --set modules=\[a: cannot read the value "\[a": /);
  });

  it('an invalid value from a flag names the flag', () => {
    const e = inputError(() => loadDescription({ file: fixture('partial.yaml'), overrides: [parseSetFlag('image.size=banana')] }));
    expect(e.message).toBe('flag --set image.size=banana: image.size: "banana" is not a size: use a number of bytes or K/M/G/T, e.g. 1G');
    const v = flagOverride('--busybox-version', ['busybox', 'version'], '1.35');
    expect(inputError(() => loadDescription({ overrides: [v] })).message).toBe(
      'flag --busybox-version 1.35: busybox.version: expected a busybox release like 1.35.0, got 1.35',
    );
  });

  it('a flag that overrides a bad file value hides it; other file errors stay in the file', () => {
    const file = fixture('bad-memory.yaml');
    expect(loadDescription({ file, overrides: [parseSetFlag('guest.memory=256')] }).guest.memory).toBe(256);
    const e = inputError(() => loadDescription({ file, overrides: [parseSetFlag('guest={vcpus: 0}')] }));
    expect(e.message.split('\n')).toEqual([
      `${file}:3:11: guest.memory: expected an integer number of MiB, got "512M" (write 512)`,
      'flag --set guest={vcpus: 0}: guest.vcpus: expected an integer from 1 to 128, got 0',
    ]);
  });

  it('unknown keys and new list entries from flags name the flag', () => {
    const overrides: Override[] = [parseSetFlag('guest.memroy=1024'), parseSetFlag('hosts.2.name=test3')];
    const lines = inputError(() => loadDescription({ file: fixture('partial.yaml'), overrides })).message.split('\n');
    expect(lines).toEqual([
      'flag --set guest.memroy=1024: guest.memroy: unknown key "memroy" in guest (allowed: name, memory, maxmem, vcpus, root, extra, mac, on_crash, on_reboot, on_poweroff, network); did you mean "memory"?',
      'flag --set hosts.2.name=test3: hosts.2.address: missing: expected an IPv4 address like 172.16.31.1',
      'flag --set hosts.2.name=test3: hosts.2.bridge: missing: expected a bridge name of 1 to 15 characters [A-Za-z0-9_.-]',
    ]);
    expect(inputError(() => loadDescription({ overrides: [parseSetFlag('hosts.5.name=x')] })).message).toBe(
      'flag --set hosts.5.name=x: hosts.5: index 5 is past the end of hosts (2 entries; the next one is 2)',
    );
    expect(inputError(() => loadDescription({ overrides: [parseSetFlag('hosts.name=x')] })).message).toBe(
      'flag --set hosts.name=x: hosts.name: hosts is a list; use an index, e.g. hosts.0.name',
    );
  });
});

describe('schema ranges', () => {
  const bad = (key: string, value: string) => () => loadDescription({ overrides: [parseSetFlag(`${key}=${value}`)] });
  const good = (key: string, value: string) => loadDescription({ overrides: [parseSetFlag(`${key}=${value}`)] });

  it.each([
    ['guest.name', 'Bad Name'],
    ['guest.name', 'a'.repeat(65)],
    ['guest.memory', '15'],
    ['guest.memory', '512.5'],
    ['guest.vcpus', '0'],
    ['guest.vcpus', '129'],
    ['guest.on_reboot', 'reboot'],
    ['busybox.version', '1.35'],
    ['busybox.fallback', 'apt'],
    ['busybox.mirrors', '[ftp://mirror.example/busybox]'],
    ['image.file', 'a/b.img'],
    ['image.populate', 'copy'],
    ['kernel.image', 'boot/vmlinuz'],
    ['kernel.ramdisk', 'initrd.img'],
    ['kernel.package', 'Linux_Image'],
    ['modules', '[xen netfront]'],
    ['store.path', 'scsistore'],
    ['store.server', '172.16.31'],
    ['store.iqn', 'iqn.15-02.com.stu31:t1'],
    ['store.initiators', '172.16.31.0/33'],
    ['hosts', '[]'],
    ['hosts.0.name', '-test1'],
    ['hosts.0.address', '256.1.1.1'],
    ['hosts.0.bridge', 'xenbr0123456789ab'],
  ])('%s=%s is rejected', (key, value) => {
    const k = key.replace(/\./g, '\\.');
    expect(inputError(bad(key, value)).message).toMatch(new RegExp(`^flag --set ${k}=.*: ${k}(\\.\\d+)?: `));
  });

  it('accepts the documented forms', () => {
    expect(good('guest.on_crash', 'coredump-restart').guest.on_crash).toBe('coredump-restart');
    expect(good('kernel.image', '/boot/vmlinuz-6.1.0-56-amd64').kernel.image).toBe('/boot/vmlinuz-6.1.0-56-amd64');
    expect(good('kernel.ramdisk', 'none').kernel.ramdisk).toBe('none');
    expect(good('busybox.config', 'configs/busybox.config').busybox.config).toBe('configs/busybox.config');
    expect(good('busybox.libc', 'musl').busybox.libc).toBe('musl');
    expect(good('image.populate', 'mount').image.populate).toBe('mount');
    expect(good('guest.vcpus', '128').guest.vcpus).toBe(128);
  });

  it('a quoted number of MiB and a number given to a text key get a hint', () => {
    expect(inputError(() => loadDescription({ file: 'g.yaml', text: 'guest:\n  memory: "1G"\n' })).message).toBe(
      'g.yaml:2:11: guest.memory: expected an integer number of MiB, got "1G" (write 1024)',
    );
    expect(inputError(() => loadDescription({ file: 'g.yaml', text: 'guest:\n  name: 7\n' })).message).toMatch(
      /^g\.yaml:2:9: guest\.name: expected a guest name .*, got 7 \(put it in quotes to make it text\)$/,
    );
  });
});
