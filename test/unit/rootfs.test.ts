// The rootfs stage on a real (if tiny) busybox-shaped install tree: a static binary compiled here
// with gcc as bin/busybox and the applet symlinks `make install` makes, the project's own
// rootfs-skel/ and rootfs-devices.txt. Layout, modes (under any umask), templates, symlinks,
// devices, the content hash, the modules slot, and the refusals.
import { cp, lstat, mkdir, readdir, readFile, readlink, rm, stat, symlink, writeFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { DeviceNode } from '../../src/fs/devtable.js';
import { InputError } from '../../src/core/errors.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';
import { projectPath } from '../../src/core/paths.js';
import { DEFAULTS } from '../../src/model/schema.js';
import { rootfsStage, type RootfsInput, type RootfsOutput } from '../../src/stages/rootfs.js';
import { listTree } from '../../src/stages/rootfs-tree.js';
import { makeTestContext, tempDir, type TestContext } from '../helpers/context.js';

const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
const SKEL = projectPath('rootfs-skel');
const DEVICES = projectPath('rootfs-devices.txt');

const DEFAULT_DEVICES: Omit<DeviceNode, 'line'>[] = (
  [
    ['/dev/console', 'c', 0o600, 5, 1],
    ['/dev/null', 'c', 0o666, 1, 3],
    ['/dev/zero', 'c', 0o666, 1, 5],
    ['/dev/tty', 'c', 0o666, 5, 0],
    ['/dev/ptmx', 'c', 0o666, 5, 2],
    ['/dev/random', 'c', 0o666, 1, 8],
    ['/dev/urandom', 'c', 0o666, 1, 9],
    ['/dev/hvc0', 'c', 0o600, 229, 0],
    ['/dev/xvda', 'b', 0o660, 202, 0],
    ['/dev/xvda1', 'b', 0o660, 202, 1],
  ] as const
).map(([path, type, mode, major, minor]) => ({ path, type, mode, uid: 0, gid: 0, major, minor }));

const TOP_LEVEL = ['bin', 'boot', 'dev', 'etc', 'lib', 'media', 'misc', 'mnt', 'opt', 'proc', 'root', 'sbin', 'sys', 'tmp', 'usr'];

let dir: string;
let installTree: string;
const contexts: TestContext[] = [];

async function context(): Promise<TestContext> {
  const ctx = await makeTestContext();
  contexts.push(ctx);
  return ctx;
}

function input(over: Partial<RootfsInput> = {}): RootfsInput {
  return { installTree, skel: SKEL, deviceTable: DEVICES, guest: { ...DEFAULTS.guest, name: 'guest1' }, ...over };
}

async function build(over: Partial<RootfsInput> = {}): Promise<RootfsOutput> {
  return rootfsStage(input(over), await context());
}

async function failure(p: Promise<unknown>): Promise<InputError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(InputError);
  return e as InputError;
}

const modeOf = async (p: string) => (await lstat(p)).mode & 0o7777;

/** A copy of the project skel to modify. */
async function skelCopy(name: string): Promise<string> {
  const copy = join(dir, name);
  await cp(SKEL, copy, { recursive: true, verbatimSymlinks: true });
  return copy;
}

beforeAll(async () => {
  dir = await tempDir('domu-rootfs-');
  await writeFile(join(dir, 'true.c'), 'int main(void) { return 0; }\n');
  installTree = join(dir, 'install');
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin']) await mkdir(join(installTree, d), { recursive: true });
  await run(env, 'gcc', ['-O1', '-static', 'true.c', '-o', join(installTree, 'bin', 'busybox')], { cwd: dir });
  await chmod(join(installTree, 'bin', 'busybox'), 0o755);
  await symlink('busybox', join(installTree, 'bin', 'sh'));
  await symlink('busybox', join(installTree, 'bin', 'mount'));
  await symlink('../bin/busybox', join(installTree, 'sbin', 'init'));
  await symlink('../bin/busybox', join(installTree, 'sbin', 'insmod'));
  await symlink('bin/busybox', join(installTree, 'linuxrc'));
  await symlink('../../bin/busybox', join(installTree, 'usr', 'bin', 'env'));
  await run(env, join(installTree, 'bin', 'busybox'), []); // really runs
});

afterEach(() => {
  process.umask(0o022);
});

afterAll(async () => {
  for (const c of contexts) await c.dispose();
  await rm(dir, { recursive: true, force: true });
});

describe('rootfsStage: the tree', () => {
  let out: RootfsOutput;
  let root: string;
  beforeAll(async () => {
    out = await build();
    root = out.staging;
  });

  it('has exactly the expected top-level layout, without linuxrc', async () => {
    expect((await readdir(root)).sort()).toEqual(TOP_LEVEL);
    await expect(lstat(join(root, 'linuxrc'))).rejects.toThrow(/ENOENT/);
    expect((await readdir(join(root, 'etc'))).sort()).toEqual(['fstab', 'group', 'hostname', 'inittab', 'modules', 'passwd', 'rc.d']);
    expect((await readdir(join(root, 'etc', 'rc.d'))).sort()).toEqual(['hvc0-shell', 'rcS']);
    expect(await readdir(join(root, 'lib'))).toEqual(['modules']);
    for (const d of ['dev', 'proc', 'sys', 'lib/modules', 'boot', 'mnt', 'media', 'opt', 'misc', 'root', 'tmp']) {
      expect(await readdir(join(root, d)), d).toEqual([]); // no device nodes: the image stage makes them
    }
  });

  it('sets the modes explicitly: tmp 01777, root 0700, the others 0755', async () => {
    expect(await modeOf(join(root, 'tmp'))).toBe(0o1777);
    expect(await modeOf(join(root, 'root'))).toBe(0o700);
    expect(await modeOf(root)).toBe(0o755);
    for (const d of ['dev', 'proc', 'sys', 'lib', 'lib/modules', 'etc', 'etc/rc.d', 'boot', 'mnt', 'media', 'opt', 'misc']) {
      expect(await modeOf(join(root, d)), d).toBe(0o755);
    }
    expect(await modeOf(join(root, 'etc/rc.d/rcS'))).toBe(0o755);
    expect(await modeOf(join(root, 'etc/passwd'))).toBe(0o644);
  });

  it('keeps the install tree: the binary and its applet symlinks', async () => {
    expect(await readFile(join(root, 'bin/busybox'))).toEqual(await readFile(join(installTree, 'bin/busybox')));
    expect(await modeOf(join(root, 'bin/busybox'))).toBe(0o755);
    expect(await readlink(join(root, 'bin/sh'))).toBe('busybox');
    expect(await readlink(join(root, 'sbin/init'))).toBe('../bin/busybox');
    expect(await readlink(join(root, 'usr/bin/env'))).toBe('../../bin/busybox');
    await run(env, join(root, 'usr/bin/env'), []); // resolves inside the tree
  });

  it('renders the templates: etc/hostname from guest.name, no .hbs left', async () => {
    expect(await readFile(join(root, 'etc/hostname'), 'utf8')).toBe('guest1\n');
    expect(out.files).toBeGreaterThan(0);
    const entries = await listTree(root);
    expect(entries.filter((e) => e.path.endsWith('.hbs'))).toEqual([]);
  });

  it('has root as the only user and group', async () => {
    expect(await readFile(join(root, 'etc/passwd'), 'utf8')).toBe('root:x:0:0:root:/root:/bin/sh\n');
    expect(await readFile(join(root, 'etc/group'), 'utf8')).toBe('root:x:0:\n');
  });

  it('returns the default device table and creates no nodes', async () => {
    expect(out.devices.map(({ line: _l, ...n }) => n)).toEqual(DEFAULT_DEVICES);
  });

  it('counts what it staged', async () => {
    const entries = await listTree(root);
    expect(out.files).toBe(entries.filter((e) => e.type === 'file').length);
    expect(out.dirs).toBe(entries.filter((e) => e.type === 'dir').length);
    expect(out.symlinks).toBe(6 - 1); // linuxrc removed
    expect(out.bytes).toBe(entries.reduce((n, e) => n + (e.size ?? 0), 0));
    expect(out.bytes).toBeGreaterThan((await stat(join(installTree, 'bin/busybox'))).size);
    expect(out.contentHash).toMatch(/^[0-9a-f]{64}$/);
  });

  it('rcS: #!/bin/sh, passes `sh -n` (dash), and does what the boot needs', async () => {
    const rcs = await readFile(join(root, 'etc/rc.d/rcS'), 'utf8');
    expect(rcs.startsWith('#!/bin/sh\n')).toBe(true);
    await run(env, 'sh', ['-n', join(root, 'etc/rc.d/rcS')]);
    expect(rcs).toMatch(/mount -t proc proc \/proc/);
    expect(rcs).toMatch(/mount -t sysfs sysfs \/sys/);
    expect(rcs).toMatch(/mount -t devtmpfs devtmpfs \/dev/);
    expect(rcs).toMatch(/\[ ! -e \/dev\/null \]/);
    expect(rcs).toMatch(/\/etc\/modules/);
    expect(rcs).toMatch(/modules\.dep/);
    expect(rcs).toMatch(/modprobe "\$_mod"/);
    expect(rcs).toMatch(/insmod "\/lib\/modules\/\$_mod\.ko"/);
    expect(rcs).toMatch(/\/etc\/hostname/);
    // exactly one ready line, to the console, at the end
    expect(rcs.match(/domu-guest-ready/g)).toHaveLength(1);
    expect(rcs.trimEnd().split('\n').at(-1)).toBe('echo domu-guest-ready > /dev/console');
    // no bashisms
    expect(rcs).not.toMatch(/\[\[|\bfunction\b|\blocal\b|\$\{[^}]*\/\/|==|<<<|\bsource\b/);
  });

  it('inittab: the required busybox init lines', async () => {
    const lines = (await readFile(join(root, 'etc/inittab'), 'utf8')).split('\n');
    const hvc0 = '::respawn:/etc/rc.d/hvc0-shell';
    for (const l of ['::sysinit:/etc/rc.d/rcS', '::askfirst:-/bin/sh', hvc0, '::ctrlaltdel:/sbin/reboot', '::shutdown:/bin/umount -a -r', '::restart:/sbin/init']) {
      expect(lines).toContain(l);
    }
    // One shell per terminal: one on the console, and hvc0-shell starts one on hvc0 only when hvc0
    // is not the console (never init opening hvc0 itself, which it would retry every second where
    // there is none).
    expect(lines.filter((l) => /^[^#].*\/bin\/sh/.test(l))).toEqual(['::askfirst:-/bin/sh']);
    expect(lines.filter((l) => /^hvc0:/.test(l))).toEqual([]);
    const script = await readFile(join(root, 'etc/rc.d/hvc0-shell'), 'utf8');
    await run(env, 'sh', ['-n', join(root, 'etc/rc.d/hvc0-shell')]);
    expect(await modeOf(join(root, 'etc/rc.d/hvc0-shell'))).toBe(0o755);
    expect(script).toMatch(/\/sys\/class\/tty\/console\/active/);
    expect(script).toMatch(/exec \/bin\/sh -l <>\/dev\/hvc0 >&0 2>&0/);
    expect(lines.some((l) => /^::(askfirst|respawn):-\/bin\/sh$/.test(l))).toBe(true);
    expect(lines.filter((l) => l.startsWith('#')).length).toBeGreaterThan(5); // explained
    for (const l of lines.filter((x) => x && !x.startsWith('#'))) expect(l.split(':')).toHaveLength(4);
  });

  it('fstab and modules are consistent with rcS', async () => {
    const fstab = await readFile(join(root, 'etc/fstab'), 'utf8');
    const entries = fstab.split('\n').filter((l) => l.trim() && !l.startsWith('#')).map((l) => l.trim().split(/\s+/));
    expect(entries.map((e) => e.slice(0, 3))).toEqual([
      ['/dev/xvda', '/', 'ext4'],
      ['proc', '/proc', 'proc'],
      ['sysfs', '/sys', 'sysfs'],
    ]);
    expect(fstab).toMatch(/^# devtmpfs +\/dev +devtmpfs/m);
    const modules = await readFile(join(root, 'etc/modules'), 'utf8');
    expect(modules.split('\n').filter((l) => l.trim() && !l.startsWith('#'))).toEqual([]);
  });
});

describe('rootfsStage: content hash and rebuilds', () => {
  it('is stable across runs, work directories and umasks; a stale staging tree is replaced', async () => {
    const ctx = await context();
    const a = await rootfsStage(input(), ctx);
    await writeFile(join(a.staging, 'stale'), 'x');
    await mkdir(join(a.staging, 'tmp', 'junk'));
    process.umask(0o077);
    const b = await rootfsStage(input(), ctx);
    const c = await build();
    process.umask(0o022);
    expect(b.staging).toBe(a.staging);
    await expect(lstat(join(b.staging, 'stale'))).rejects.toThrow(/ENOENT/);
    expect(b.contentHash).toBe(a.contentHash);
    expect(c.contentHash).toBe(a.contentHash);
    expect(c.staging).not.toBe(a.staging);
    expect(await modeOf(join(c.staging, 'tmp'))).toBe(0o1777);
    expect(await modeOf(join(c.staging, 'etc/hostname'))).toBe(0o644);
    expect(await modeOf(join(c.staging, 'etc/rc.d/rcS'))).toBe(0o755);
  });

  it('changes with a skel file, the guest name, a mode, or a device; not with table comments', async () => {
    const base = (await build()).contentHash;
    const skel = await skelCopy('skel-changed');
    await writeFile(join(skel, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/ash\n');
    expect((await build({ skel })).contentHash).not.toBe(base);

    expect((await build({ guest: { ...DEFAULTS.guest, name: 'other' } })).contentHash).not.toBe(base);

    const skel2 = await skelCopy('skel-mode');
    await chmod(join(skel2, 'etc/inittab'), 0o600);
    const moded = await build({ skel: skel2 });
    expect(moded.contentHash).not.toBe(base);
    expect(await modeOf(join(moded.staging, 'etc/inittab'))).toBe(0o600);

    const table = await readFile(DEVICES, 'utf8');
    const t1 = join(dir, 'devs-comment.txt');
    await writeFile(t1, `# another comment\n\n${table}`);
    expect((await build({ deviceTable: t1 })).contentHash).toBe(base);
    const t2 = join(dir, 'devs-changed.txt');
    await writeFile(t2, table.replace('/dev/null       c    0666', '/dev/null       c    0660'));
    expect((await build({ deviceTable: t2 })).contentHash).not.toBe(base);
  });

  it('drops group/other write from skel modes (a umask 002 checkout is the same tree)', async () => {
    const base = (await build()).contentHash;
    const skel = await skelCopy('skel-002');
    await chmod(join(skel, 'etc/passwd'), 0o664);
    await chmod(join(skel, 'etc/rc.d/rcS'), 0o775);
    await chmod(join(skel, 'etc/rc.d'), 0o775);
    expect((await build({ skel })).contentHash).toBe(base);
  });
});

describe('rootfsStage: overlay rules', () => {
  it('keeps skel symlinks verbatim and replaces an install-tree symlink instead of writing through it', async () => {
    const skel = await skelCopy('skel-links');
    await symlink('/proc/mounts', join(skel, 'etc/mtab'));
    await mkdir(join(skel, 'usr/bin'), { recursive: true });
    await writeFile(join(skel, 'usr/bin/env'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    const out = await build({ skel });
    expect(await readlink(join(out.staging, 'etc/mtab'))).toBe('/proc/mounts');
    expect((await lstat(join(out.staging, 'usr/bin/env'))).isFile()).toBe(true);
    expect(await readFile(join(out.staging, 'bin/busybox'))).toEqual(await readFile(join(installTree, 'bin/busybox')));
  });

  it('refuses to create a directory through a symlink of the tree', async () => {
    const skel = await skelCopy('skel-through');
    await mkdir(join(skel, 'bin/sh'), { recursive: true });
    await writeFile(join(skel, 'bin/sh/x'), 'x');
    const e = await failure(build({ skel }));
    expect(e.message).toMatch(/bin\/sh.* is a symlink in the root file system/);

    const outside = join(dir, 'outside');
    await mkdir(outside, { recursive: true });
    const tree = join(dir, 'install-opt-link');
    await cp(installTree, tree, { recursive: true, verbatimSymlinks: true });
    await symlink(outside, join(tree, 'opt'));
    const skel2 = await skelCopy('skel-opt');
    await mkdir(join(skel2, 'opt'));
    await writeFile(join(skel2, 'opt/file'), 'x');
    const e2 = await failure(build({ installTree: tree, skel: skel2 }));
    expect(e2.message).toMatch(/layout directory: opt would be created through opt, which is a symlink/);
    expect(await readdir(outside)).toEqual([]);
  });

  it('a file where the tree has a directory is an error', async () => {
    const skel = await skelCopy('skel-filedir');
    await writeFile(join(skel, 'tmp'), 'x');
    expect((await failure(build({ skel }))).message).toMatch(/skel .*tmp: tmp is a directory in the root file system/);
  });

  it('a missing template value is a clear InputError naming the template and the value', async () => {
    const skel = await skelCopy('skel-badtpl');
    await writeFile(join(skel, 'etc/motd.hbs'), 'Welcome to {{guest.name}}\n{{guest.colour}}\n');
    const e = await failure(build({ skel }));
    expect(e.message).toBe(`skel ${join(skel, 'etc/motd.hbs')}: template error: line 2, column 2: no value for "colour" (a missing value is an error)`);
    expect(e.hint).toMatch(/guest\.name, guest\.memory, guest\.vcpus/);

    await writeFile(join(skel, 'etc/motd.hbs'), 'Welcome to {{guest.name\n');
    expect((await failure(build({ skel }))).message).toMatch(/etc\/motd\.hbs: template error: Parse error on line 1/);
  });

  it('renders the guest values unescaped and keeps the template mode', async () => {
    const skel = await skelCopy('skel-tpl');
    await writeFile(join(skel, 'etc/motd.hbs'), '{{guest.name}} {{guest.memory}} MiB {{guest.vcpus}} vcpu {{guest.extra}}\n', { mode: 0o600 });
    const out = await build({ skel, guest: { ...DEFAULTS.guest, name: 'guest1', extra: 'a<b & "c"' } });
    expect(await readFile(join(out.staging, 'etc/motd'), 'utf8')).toBe('guest1 512 MiB 1 vcpu a<b & "c"\n');
    expect(await modeOf(join(out.staging, 'etc/motd'))).toBe(0o600);
  });

  it('a template and a plain file for the same path is an error', async () => {
    const skel = await skelCopy('skel-twice');
    await writeFile(join(skel, 'etc/hostname'), 'x\n');
    expect((await failure(build({ skel }))).message).toMatch(/etc\/hostname is also produced by/);
  });

  it('a FIFO in the skel is an InputError naming it, before anything is staged', async () => {
    const skel = await skelCopy('skel-fifo');
    await run(env, 'mkfifo', [join(skel, 'etc/pipe')]);
    const ctx = await context();
    const e = await failure(rootfsStage(input({ skel }), ctx));
    expect(e.message).toBe(`skel ${join(skel, 'etc/pipe')}: a fifo: only regular files, directories and symlinks can be laid over the root`);
    expect(e.exitCode).toBe(2);
    await expect(lstat(join(ctx.workDir, 'rootfs'))).rejects.toThrow(/ENOENT/);
  });

  it('bad inputs: missing install tree, skel or table, no bin/sh, a bad table line', async () => {
    expect((await failure(build({ installTree: join(dir, 'nope') }))).message).toMatch(/busybox install tree .*nope: not found/);
    expect((await failure(build({ skel: join(dir, 'nope') }))).message).toMatch(/skel directory .*nope: not found/);
    expect((await failure(build({ deviceTable: join(dir, 'nope.txt') }))).message).toMatch(/device table .*nope\.txt: not found/);
    const empty = join(dir, 'empty-install');
    await mkdir(join(empty, 'bin'), { recursive: true });
    expect((await failure(build({ installTree: empty }))).message).toMatch(/has no bin\/sh/);
    const bad = join(dir, 'bad-devs.txt');
    await writeFile(bad, '/dev/null c 0666 0 0 1 3\n/dev/null c 0666 0 0 1 3\n');
    expect((await failure(build({ deviceTable: bad }))).message).toBe(`${bad}:2: duplicate path /dev/null (already on line 1)`);
  });

  it('device nodes: their directories are made; a node cannot replace a staged file', async () => {
    const t = join(dir, 'devs-xen.txt');
    await writeFile(t, '/dev/xen/evtchn c 0600 0 0 10 61\n');
    const out = await build({ deviceTable: t });
    expect(await readdir(join(out.staging, 'dev'))).toEqual(['xen']);
    expect(await readdir(join(out.staging, 'dev/xen'))).toEqual([]);
    expect(await modeOf(join(out.staging, 'dev/xen'))).toBe(0o755);

    const t2 = join(dir, 'devs-passwd.txt');
    await writeFile(t2, '# x\n/etc/passwd c 0600 0 0 1 3\n');
    expect((await failure(build({ deviceTable: t2 }))).message).toBe(`${t2}:2: /etc/passwd already exists in the root file system (from the install tree, the skel or the modules); a device node cannot replace it`);
  });
});

describe('rootfsStage: the modules slot', () => {
  it('copies module files to their destinations and writes etc/modules', async () => {
    const ko = join(dir, 'xen-netfront.ko');
    await writeFile(ko, 'not really a module');
    const files = [
      { src: ko, dest: 'lib/modules/6.1.0-test/kernel/drivers/net/xen-netfront.ko' },
      { src: ko, dest: 'lib/modules/xen-netfront.ko' },
    ];
    const base = await build();
    const out = await build({ modules: { files, etcModules: 'xen-netfront\n' } });
    for (const f of files) {
      expect(await readFile(join(out.staging, f.dest), 'utf8')).toBe('not really a module');
      expect(await modeOf(join(out.staging, f.dest))).toBe(0o644);
    }
    expect(await modeOf(join(out.staging, 'lib/modules/6.1.0-test/kernel'))).toBe(0o755);
    expect(await readFile(join(out.staging, 'etc/modules'), 'utf8')).toBe('xen-netfront\n');
    expect(out.contentHash).not.toBe(base.contentHash);
    expect(out.files).toBe(base.files + 2);

    const empty = await build({ modules: { files: [] } });
    expect(empty.contentHash).toBe(base.contentHash);
  });

  it('refuses destinations outside the guest root and missing sources', async () => {
    const ko = join(dir, 'm.ko');
    await writeFile(ko, 'x');
    for (const dest of ['/lib/modules/m.ko', '../m.ko', 'lib/../../m.ko', 'lib//m.ko']) {
      await expect(build({ modules: { files: [{ src: ko, dest }] } })).rejects.toThrow(/is not a plain path relative to the guest root/);
    }
    await expect(build({ modules: { files: [{ src: ko, dest: 'lib/m.ko' }, { src: ko, dest: 'lib/m.ko' }] } })).rejects.toThrow(/given twice/);
    expect((await failure(build({ modules: { files: [{ src: join(dir, 'gone.ko'), dest: 'lib/m.ko' }] } }))).message).toMatch(/gone\.ko: not found/);
  });
});
