// The guest ramdisk for real: the Debian kernel package's own modules (some recompressed to
// .ko.xz/.ko.zst/.ko.gz here, to prove they are stored decompressed), a static busybox 1.35.0
// built by our stages, checked with GNU cpio and depmod, and then booted under QEMU (TCG) into a
// small ext4 image whose init prints a marker: the ramdisk's messages must show every module
// loaded, the root mounted as asked, the arguments handed on; an absent root must give the one
// clear timeout message and then a panic (panic=) or a rescue shell (no panic=).
import { copyFile, mkdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { sha256, sha256File } from '../../src/core/hash.js';
import type { KernelPackage } from '../../src/kernel/kernel.js';
import { memoryLogger } from '../../src/core/log.js';
import { projectPath } from '../../src/core/paths.js';
import { initramfsStage, type InitramfsModule, type InitramfsOutput } from '../../src/stages/initramfs.js';
import { makeTestContext, tempDir } from '../helpers/context.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import { getStaticBusybox, type StaticBusybox } from '../helpers/static-busybox.js';
import { describeTree, diffTrees, type TreeEntry } from '../helpers/tree.js';

const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
const EPOCH = 1_700_000_000;
const BOOT_TIMEOUT = 180_000; // TCG boots take 5–10 s here; generous for a loaded machine
const MARKER = 'DOMU-INITRAMFS-TEST-MARKER';

/** Root on virtio-blk ext4: what the ramdisk must load, with every dependency (see MODULES). */
const ROOT_MODULES = ['virtio_pci', 'virtio_blk', 'ext4'];
/**
 * ROOT_MODULES and their dependencies in load order, as this kernel's kmod resolves them:
 * `modprobe --show-depends` on a depmod of the downloaded modules (hard and soft dependencies),
 * each module once. Left out: modules under kernel/arch/, the CPU-specific accelerated providers
 * of a soft dependency (crc32c-intel for crypto-crc32c), which the emulated CPU of the boot tests
 * need not support; the portable provider (crc32c_generic) stays. `name` is the file's name
 * without .ko, as the ramdisk's /init reports it. Checked against depmod below.
 */
let MODULES: [name: string, path: string][];
/** Given to the stage compressed, as other distributions ship them: module, program and suffix (set in beforeAll). */
let RECOMPRESS: Record<string, [program: string, suffix: string]>;
/** modules.dep of depmod over the whole downloaded modules tree (relative paths). */
let fullDep: Map<string, string[]>;
/** A module's name as the kernel knows it. */
const nameOf = (p: string) => basename(p).replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_');

let kernel: KernelPackage;
let busybox: StaticBusybox;
let dir: string;
let modules: InitramfsModule[];
let built: InitramfsOutput;
let stageLines: string[];

beforeAll(async () => {
  [kernel, busybox] = await Promise.all([getKernelPackage(), getStaticBusybox()]);
  dir = await tempDir('domu-initramfs-');
  // kmod on a depmod of the whole tree (hard links: cheap), with no modprobe configuration of the host.
  const full = join(dir, 'depmod-full');
  await mkdir(join(full, 'lib', 'modules'), { recursive: true });
  await mkdir(join(dir, 'modprobe.d'));
  await run(env, 'cp', ['-al', kernel.modules, join(full, 'lib', 'modules')]);
  await run(env, 'depmod', ['-b', full, kernel.release]);
  const fullBase = join(full, 'lib', 'modules', kernel.release);
  fullDep = new Map(
    (await readFile(join(fullBase, 'modules.dep'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [mod, deps = ''] = l.split(':');
        return [mod!, deps.trim().split(/\s+/).filter(Boolean)];
      }),
  );
  const shown = await run(env, 'modprobe', ['-C', join(dir, 'modprobe.d'), '--show-depends', '-d', full, '-S', kernel.release, '-a', ...ROOT_MODULES], { quiet: true });
  MODULES = [];
  for (const line of shown.stdout.split('\n')) {
    const file = /^insmod (\S+)/.exec(line)?.[1];
    if (!file) continue; // `builtin …`: nothing to load
    expect(file.startsWith(`${fullBase}/`), line).toBe(true);
    const path = file.slice(fullBase.length + 1);
    if (path.startsWith('kernel/arch/') || MODULES.some(([, p]) => p === path)) continue;
    MODULES.push([basename(path).replace(/\.ko$/, ''), path]);
  }
  expect(MODULES.map(([, p]) => nameOf(p))).toEqual(expect.arrayContaining(ROOT_MODULES));
  // ext4 itself, its journal, and a third module (crc16 where ext4 still needs it) go in compressed.
  const third = MODULES.some(([n]) => n === 'crc16') ? 'crc16' : 'virtio_blk';
  RECOMPRESS = { ext4: ['xz', '.xz'], jbd2: ['zstd', '.zst'], [third]: ['gzip', '.gz'] };
  for (const n of Object.keys(RECOMPRESS)) expect(MODULES.map(([m]) => m), `${n} is loaded from the ramdisk`).toContain(n);
  modules = [];
  for (const [name, path] of MODULES) {
    const plain = join(kernel.modules, path);
    const z = RECOMPRESS[name];
    if (!z) {
      modules.push({ name, file: plain, path });
      continue;
    }
    const copy = join(dir, 'compressed', path);
    await mkdir(dirname(copy), { recursive: true });
    await copyFile(plain, copy);
    await run(env, z[0], ['-q', copy]); // replaces the copy by copy + suffix
    modules.push({ name, file: copy + z[1], path: path + z[1] });
  }
  const ctx = await makeTestContext();
  try {
    built = await initramfsStage({ busybox: busybox.binary, release: kernel.release, modules, output: join(dir, 'out', 'initrd.gz'), sourceDateEpoch: EPOCH }, ctx);
    stageLines = ctx.lines;
    expect(ctx.cleanup.size, 'nothing left registered for cleanup').toBe(0);
  } finally {
    await ctx.dispose();
  }
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the load order', () => {
  it("respects depmod's modules.dep and modules.softdep (crc32c before ext4 and jbd2)", async () => {
    const root = join(dir, 'depmod');
    const base = join(root, 'lib', 'modules', kernel.release);
    for (const [, path] of MODULES) {
      await mkdir(dirname(join(base, path)), { recursive: true });
      await copyFile(join(kernel.modules, path), join(base, path));
    }
    await run(env, 'depmod', ['-b', root, kernel.release]);
    const dep = await readFile(join(base, 'modules.dep'), 'utf8');
    const order = MODULES.map(([, path]) => nameOf(path));
    let checked = 0;
    let lines = 0;
    for (const line of dep.trim().split('\n')) {
      const [mod, deps = ''] = line.split(':');
      const m = nameOf(mod!);
      const list = deps.trim().split(/\s+/).filter(Boolean);
      // The same dependencies as depmod finds over the whole package: the list is closed.
      expect(list, `${mod}: as in the whole tree's modules.dep`).toEqual(fullDep.get(mod!));
      lines += 1;
      for (const d of list) {
        expect(order, `${m} needs ${nameOf(d)}`).toContain(nameOf(d));
        expect(order.indexOf(nameOf(d)), `${nameOf(d)} before ${m}`).toBeLessThan(order.indexOf(m));
        checked += 1;
      }
    }
    expect(lines).toBe(MODULES.length);
    expect(checked).toBe(MODULES.reduce((n, [, path]) => n + fullDep.get(path)!.length, 0));
    expect(checked).toBeGreaterThan(0); // ext4 needs its journal (jbd2), at least
    // Soft dependencies (ext4 and jbd2: pre: crypto-crc32c): some module of the list provides each
    // (modules.alias), and every provider in the list loads before the module that wants it.
    const softdep = await readFile(join(base, 'modules.softdep'), 'utf8');
    const aliases = [...(await readFile(join(base, 'modules.alias'), 'utf8')).matchAll(/^alias (\S+) (\S+)$/gm)];
    let soft = 0;
    for (const m of softdep.matchAll(/^softdep (\S+) pre: (.*?)(?: post: .*)?$/gm)) {
      for (const want of m[2]!.trim().split(/\s+/).filter(Boolean)) {
        const providers = aliases.filter((a) => a[1] === want).map((a) => a[2]!).filter((p) => order.includes(p));
        expect(providers, `${m[1]} wants ${want} first`).not.toEqual([]);
        for (const p of providers) expect(order.indexOf(p), `${p} before ${m[1]}`).toBeLessThan(order.indexOf(m[1]!));
        soft += 1;
      }
    }
    // As many as the listed modules declare (kmod's modinfo -F softdep).
    let declared = 0;
    for (const [, path] of MODULES) {
      const r = await run(env, 'modinfo', ['-F', 'softdep', join(kernel.modules, path)], { quiet: true });
      for (const l of r.stdout.split('\n')) declared += (/^\s*pre:\s*(.*?)(?:\s+post:.*)?$/.exec(l)?.[1] ?? '').split(/\s+/).filter(Boolean).length;
    }
    expect(soft).toBe(declared);
  });
});

describe('the ramdisk built from the real kernel package and busybox', () => {
  const moduleDir = () => `lib/modules/${kernel.release}`;

  it('reports what it wrote', async () => {
    expect(built.path).toBe(join(dir, 'out', 'initrd.gz'));
    expect(built.size).toBe((await stat(built.path)).size);
    expect(built.sha256).toBe(await sha256File(built.path));
    expect(built.modules).toEqual(MODULES.map(([n]) => n));
    expect(built.uncompressedSize).toBe(gunzipSync(await readFile(built.path)).length);
    expect(built.size).toBeLessThan(built.uncompressedSize);
    expect(stageLines.some((l) => l.includes(`${MODULES.length} modules`) && l.includes(built.path))).toBe(true);
  });

  it('cpio -t lists exactly the expected names', async () => {
    const r = await run(env, 'cpio', ['-t', '--quiet'], { input: gunzipSync(await readFile(built.path)), quiet: true });
    const names = r.stdout.split('\n');
    const dirsOf = (p: string) => p.split('/').slice(0, -1).map((_, i, a) => a.slice(0, i + 1).join('/'));
    const modPaths = MODULES.map(([, p]) => `${moduleDir()}/${p}`);
    const expected = new Set(['init', 'bin/busybox', 'bin/sh', 'dev/console', 'dev/null', 'etc/modules', 'newroot', 'proc', 'sys', 'tmp', moduleDir(), ...modPaths]);
    for (const p of [...expected]) for (const d of dirsOf(p)) expected.add(d);
    expect([...names].sort()).toEqual([...expected].sort());
    expect(built.entries).toBe(names.length);
  });

  it('cpio -idm gives exactly the expected tree: modules decompressed, /init, busybox, load list', async () => {
    const into = join(dir, 'extracted');
    await mkdir(into);
    await run(env, 'cpio', ['-i', '-d', '-m', '--quiet', '--no-absolute-filenames'], { input: gunzipSync(await readFile(built.path)), cwd: into, quiet: true });
    const file = async (path: string, src: string | Buffer, mode = 0o644): Promise<TreeEntry> => {
      const b = typeof src === 'string' ? await readFile(src) : src;
      return { path, type: 'file', mode, size: b.length, sha256: sha256(b) };
    };
    const expected: TreeEntry[] = [
      await file('init', projectPath('initramfs', 'init'), 0o755),
      await file('bin/busybox', busybox.binary, 0o755),
      { path: 'bin/sh', type: 'symlink', mode: 0o777, target: 'busybox' },
      { path: 'dev/console', type: 'other', mode: 0o600 },
      { path: 'dev/null', type: 'other', mode: 0o666 },
      { path: 'tmp', type: 'dir', mode: 0o1777 },
      await file('etc/modules', Buffer.from(built.loadList)),
    ];
    for (const [, path] of MODULES) expected.push(await file(`${moduleDir()}/${path}`, join(kernel.modules, path))); // the plain .ko bytes
    for (const d of ['bin', 'dev', 'etc', 'lib', 'lib/modules', 'newroot', 'proc', 'sys']) expected.push({ path: d, type: 'dir', mode: 0o755 });
    const got = await describeTree(into);
    for (const e of got) if (e.type === 'dir' && !expected.some((x) => x.path === e.path)) expected.push({ path: e.path, type: 'dir', mode: 0o755 });
    expect(diffTrees(got, expected)).toEqual([]);
    // The module directories are there.
    const moduleDirs = new Set(MODULES.flatMap(([, p]) => `${moduleDir()}/${p}`.split('/').slice(0, -1).map((_, i, a) => a.slice(0, i + 1).join('/'))));
    for (const d of moduleDirs) expect(got.some((e) => e.path === d && e.type === 'dir'), d).toBe(true);
    const devs = await Promise.all(['console', 'null'].map((n) => stat(join(into, 'dev', n))));
    expect(devs.map((s) => [s.isCharacterDevice(), (s.rdev >> 8) & 0xfff, s.rdev & 0xff])).toEqual([
      [true, 5, 1],
      [true, 1, 3],
    ]);
    // The load list: the modules' paths on the ramdisk, in order, .ko without compression suffix.
    const listed = built.loadList.split('\n').filter((l) => l && !l.startsWith('#'));
    expect(listed).toEqual(MODULES.map(([, p]) => `/${moduleDir()}/${p}`));
    expect(await readFile(join(into, 'etc', 'modules'), 'utf8')).toBe(built.loadList);
  });

  it('is reproducible: a second generation is byte-identical', async () => {
    const ctx = await makeTestContext();
    try {
      const again = await initramfsStage({ busybox: busybox.binary, release: kernel.release, modules, output: join(dir, 'again', 'initrd.gz'), sourceDateEpoch: EPOCH }, ctx);
      expect(again.sha256).toBe(built.sha256);
      expect((await readFile(again.path)).equals(await readFile(built.path))).toBe(true);
    } finally {
      await ctx.dispose();
    }
  });

  it('refuses a module built for another kernel, and one whose name does not match', async () => {
    const ctx = await makeTestContext();
    try {
      const ext4 = MODULES.find(([n]) => n === 'ext4')![1];
      const one = [{ name: 'ext4', file: join(kernel.modules, ext4), path: ext4 }];
      const out = join(dir, 'bad', 'initrd.gz');
      await expect(initramfsStage({ busybox: busybox.binary, release: '6.1.0-1-amd64', modules: one, output: out, sourceDateEpoch: EPOCH }, ctx)).rejects.toThrow(
        new RegExp(`ext4\\.ko was built for kernel ${kernel.release.replace(/\./g, '\\.')}, the ramdisk is for 6\\.1\\.0-1-amd64`),
      );
      await expect(initramfsStage({ busybox: busybox.binary, release: kernel.release, modules: [{ ...one[0]!, name: 'jbd2' }], output: out, sourceDateEpoch: EPOCH }, ctx)).rejects.toThrow(/is module ext4, not jbd2/);
      await expect(initramfsStage({ busybox: busybox.binary, release: kernel.release, modules: [{ ...one[0]!, path: '../../etc/x.ko' }], output: out, sourceDateEpoch: EPOCH }, ctx)).rejects.toThrow(/"\.\." component/);
      await expect(stat(out)).rejects.toThrow(); // nothing written
      expect(ctx.cleanup.size).toBe(0);
    } finally {
      await ctx.dispose();
    }
  });
});

interface Boot {
  console: string;
  exitCode: number | undefined;
  timedOut: boolean;
}

/**
 * Boot the kernel with `initrd` and the test image under QEMU TCG; the serial console is
 * stdin/stdout. `answer` types a line once the console matches `when`. -snapshot keeps
 * the image unchanged (`poweroff -f` does not unmount).
 */
async function boot(initrd: string, image: string, append: string, opts: { panic?: boolean; answer?: { when: RegExp; type: string } } = {}): Promise<Boot> {
  const answer = opts.answer;
  // panic=-1: a kernel panic reboots at once, and -no-reboot turns that into QEMU's exit.
  const cmdline = `console=ttyS0 ${opts.panic === false ? '' : 'panic=-1 '}quiet ${append}`;
  const child = execa(
    'qemu-system-x86_64',
    ['-accel', 'tcg', '-nographic', '-no-reboot', '-m', '512', '-nic', 'none', '-kernel', kernel.image, '-initrd', initrd, '-drive', `file=${image},format=raw,if=virtio`, '-snapshot', '-append', cmdline],
    { stdin: 'pipe', all: true, buffer: false, reject: false, timeout: BOOT_TIMEOUT, forceKillAfterDelay: 2000 },
  );
  let text = '';
  let answered = false;
  child.all!.on('data', (c: Buffer) => {
    text += c.toString('latin1');
    if (answer && !answered && answer.when.test(text.replace(/\r/g, ''))) {
      answered = true;
      child.stdin!.write(answer.type);
    }
  });
  const r = await child;
  return { console: text.replace(/\r/g, ''), exitCode: r.exitCode, timedOut: r.timedOut };
}

const tail = (b: Boot) => `${b.timedOut ? 'TIMED OUT; ' : ''}console tail:\n${b.console.split('\n').slice(-40).join('\n')}`;

describe('booting it under QEMU (TCG)', () => {
  let image: string;
  beforeAll(async () => {
    // The guest root: the static busybox and an init that prints the marker, its arguments, an
    // environment variable from the kernel command line and how / is mounted, then powers off.
    const tree = join(dir, 'guest-root');
    for (const d of ['bin', 'sbin', 'dev', 'proc', 'sys']) await mkdir(join(tree, d), { recursive: true });
    await copyFile(busybox.binary, join(tree, 'bin', 'busybox'));
    await symlink('busybox', join(tree, 'bin', 'sh'));
    await writeFile(
      join(tree, 'sbin', 'init'),
      ['#!/bin/sh', `/bin/busybox echo "${MARKER} args=[$*] domu_test=[$domu_test] pid=$$"`, "/bin/busybox grep ' / ' /proc/mounts", '/bin/busybox poweroff -f', ''].join('\n'),
      { mode: 0o755 },
    );
    image = join(dir, 'guest.img');
    await run(env, 'truncate', ['-s', '64M', image]);
    await run(env, 'mke2fs', ['-q', '-t', 'ext4', '-L', 'domutest', '-d', tree, image]);
  });

  it(
    'root=/dev/vda ro: every module loaded, the root mounted read-only, switch_root to init with its arguments',
    async () => {
      const b = await boot(built.path, image, `root=/dev/vda ro init=/sbin/init domu_test=42 -- one two`);
      expect(b.timedOut, tail(b)).toBe(false);
      expect(b.console, tail(b)).toContain(`${MARKER} args=[one two] domu_test=[42] pid=1`);
      for (const [name] of MODULES) expect(b.console, tail(b)).toContain(`initramfs: loaded ${name}\n`);
      expect(b.console).not.toMatch(/initramfs: insmod /);
      expect(b.console).toContain('initramfs: mounted /dev/vda on /newroot (ro)');
      expect(b.console).toContain('initramfs: switching to /dev/vda: /sbin/init one two');
      expect(b.console).toMatch(/^\/dev\/vda \/ ext4 ro[,\s]/m);
      expect(b.console).toMatch(/reboot: Power down/);
      expect(b.exitCode).toBe(0);
    },
    BOOT_TIMEOUT + 30_000,
  );

  it(
    'root=LABEL=… rw rootfstype=ext4, with a module that fails to load: reported, and the boot goes on',
    async () => {
      // xen-netfront loads nowhere but under Xen ("No such device"; facts.md): a failing module.
      const ctx = await makeTestContext();
      let initrd: string;
      try {
        const netfront = 'kernel/drivers/net/xen-netfront.ko';
        const withNetfront = [{ name: 'xen-netfront', file: join(kernel.modules, netfront), path: netfront }, ...modules];
        initrd = (await initramfsStage({ busybox: busybox.binary, release: kernel.release, modules: withNetfront, output: join(dir, 'netfront', 'initrd.gz'), sourceDateEpoch: EPOCH }, ctx)).path;
      } finally {
        await ctx.dispose();
      }
      const b = await boot(initrd, image, 'root=LABEL=domutest rw rootfstype=ext4');
      expect(b.timedOut, tail(b)).toBe(false);
      expect(b.console, tail(b)).toMatch(/initramfs: insmod xen-netfront: .*No such device; going on\n/);
      expect(b.console, tail(b)).toContain(`${MARKER} args=[] domu_test=[] pid=1`);
      expect(b.console).toContain('initramfs: loaded ext4\n');
      expect(b.console).toContain('initramfs: mounted /dev/vda on /newroot (rw, ext4)');
      expect(b.console).toContain('initramfs: switching to LABEL=domutest: /sbin/init');
      expect(b.console).toMatch(/^\/dev\/vda \/ ext4 rw[,\s]/m);
    },
    BOOT_TIMEOUT + 30_000,
  );

  it(
    'an absent root device with panic=: one clear timeout message naming it and the modules, then a kernel panic',
    async () => {
      const b = await boot(built.path, image, 'root=/dev/vdb rootdelay=3');
      expect(b.timedOut, tail(b)).toBe(false); // QEMU ended by itself: the panic rebooted it (-no-reboot)
      const loaded = MODULES.map(([n]) => n).join(' ');
      expect(b.console, tail(b)).toContain(`initramfs: root device /dev/vdb did not appear within 3 s (modules loaded: ${loaded}; failed: none; block devices: vda)\n`);
      expect(b.console).toContain('initramfs: panic=-1 is on the kernel command line: stopping, the kernel panics');
      expect(b.console).toMatch(/Kernel panic - not syncing: Attempted to kill init!/);
      expect(b.console).not.toContain(MARKER);
    },
    BOOT_TIMEOUT + 30_000,
  );

  it(
    'an absent root device without panic=: the message, then a rescue shell on the console',
    async () => {
      const b = await boot(built.path, image, 'root=/dev/vdb rootdelay=1', { panic: false, answer: { when: /exit it to try again\n[^]*# $/, type: 'echo RESCUE-$((6 * 7)); poweroff -f\n' } });
      expect(b.timedOut, tail(b)).toBe(false);
      expect(b.console, tail(b)).toContain('initramfs: root device /dev/vdb did not appear within 1 s');
      expect(b.console).toContain('initramfs: starting a shell on the console (no panic=<s> on the kernel command line); exit it to try again');
      expect(b.console, tail(b)).toMatch(/^RESCUE-42$/m); // the shell ran our line (the echo of it shows $((6 * 7)))
      expect(b.console).not.toMatch(/Kernel panic/);
    },
    BOOT_TIMEOUT + 30_000,
  );
});
