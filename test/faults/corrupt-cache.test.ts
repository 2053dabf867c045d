// A corrupt cache is detected and never used. Each case copies a known-good cache (built once
// here, with a tiny busybox configuration that compiles in seconds: the cache paths are the
// same as for the full one), damages one entry the way a disk, a crash or a hand does, and runs
// the real `domu build --until <stage>`: the run must succeed, warn with the entry's name and
// what is wrong, produce the entry again, and the bytes it then uses must be the good ones. The
// kernel and module cases read the real Debian kernel from the shared test cache, which is
// only ever copied, never damaged.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256, sha256File } from '../../src/core/hash.js';
import { MANIFEST_FILE, verifyByHash } from '../../src/core/manifest.js';
import { BUSYBOX_1_35_SHA256, getBusyboxTarball } from '../helpers/busybox-tarball.js';
import { domuJson, stage, type Summary } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import { describeTree, diffTrees } from '../helpers/tree.js';
import { reliability } from './reliability.js';

const TIMEOUT = 600_000;
const TARBALL_NAME = 'busybox-1.35.0.tar.bz2';

let root: string;
let tarball: string;
/** A complete cache (sources, trees, kconfig, installs) from one good build. */
let golden: string;
let goldenSummary: Summary;
let config: string;

/** `domu build --json --until <until>` of the tiny configuration on `cache`. */
function build(cache: string, until: string, extra: string[] = []): ReturnType<typeof domuJson> {
  return domuJson(['build', '--json', '--until', until, '--config', config, '--cache-dir', cache, '--out', join(cache, '..', 'out'), '--jobs', '2', ...extra]);
}

/** A private copy of the good cache (no hard links: damaging it must not reach the original). */
async function copyOfGolden(name: string): Promise<string> {
  const dir = join(root, name);
  await mkdir(dir, { recursive: true });
  await execa('cp', ['-a', '--reflink=auto', golden, join(dir, 'cache')]);
  await rm(join(dir, 'cache', 'runs'), { recursive: true, force: true });
  return join(dir, 'cache');
}

/** The one entry of `kind` in `cache`. */
function entryOf(cache: string, kind: string): string {
  const names = readdirSync(join(cache, kind)).filter((n) => !n.startsWith('.') && !n.endsWith('.json'));
  expect(names, `${kind} entries in ${cache}`).toHaveLength(1);
  return join(cache, kind, names[0]!);
}

const warningsOf = (s: Summary) => s.warnings.map((w) => w.message);

/** The one warning about cache entry `<kind>/…`, checked for the entry's name, the problem and the redo. */
function corruptWarning(s: Summary, entry: string, problem: RegExp): string {
  const kindKey = `${basename(join(entry, '..'))}/${basename(entry)}`;
  const found = warningsOf(s).filter((m) => m.startsWith('cache entry '));
  expect(found, JSON.stringify(warningsOf(s))).toHaveLength(1);
  const w = found[0]!;
  expect(w.startsWith(`cache entry ${kindKey} is corrupt (`), w).toBe(true);
  expect(w).toMatch(problem);
  return w;
}

/** A warning with the key shortened, for the reliability table. */
const shortly = (w: string) => w.replace(/([0-9a-f]{12})[0-9a-f]{52}/g, '$1…');

const statuses = (s: Summary) => Object.fromEntries(s.stages.map((x) => [x.name, x.cacheHit ? 'cached' : x.status]));

/** Change one byte of `path` in place and put its mtime back to the nanosecond: same size, same mtime. */
async function sameSizeEdit(path: string, offset?: number): Promise<{ before: string; after: string }> {
  const ref = join(root, 'mtime-ref'); // outside the entry: its directory stays untouched
  await writeFile(ref, '');
  execFileSync('touch', ['-r', path, ref]);
  const data = await readFile(path);
  const before = sha256(data);
  const at = offset ?? Math.floor(data.length / 2);
  data[at] = data[at]! ^ 0x01;
  await writeFile(path, data);
  execFileSync('touch', ['-r', ref, path]);
  await rm(ref);
  return { before, after: sha256(data) };
}

beforeAll(async () => {
  tarball = await getBusyboxTarball();
  root = await tempDir('domu-faults-corrupt-');
  // allnoconfig + STATIC, BUSYBOX, ECHO: a full .config that compiles in seconds.
  const base = join(root, 'tiny');
  await mkdir(base);
  await execa('tar', ['xjf', tarball, '-C', base]);
  await execa('make', ['allnoconfig'], { cwd: join(base, 'busybox-1.35.0') });
  let text = await readFile(join(base, 'busybox-1.35.0', '.config'), 'utf8');
  for (const sym of ['STATIC', 'BUSYBOX', 'ECHO']) text = text.replace(`# CONFIG_${sym} is not set`, `CONFIG_${sym}=y`);
  await writeFile(join(base, 'tiny.config'), text);
  await rm(join(base, 'busybox-1.35.0'), { recursive: true, force: true });
  config = join(base, 'guest.yaml');
  // fallback none: a run that cannot use the cache and gets no --source has no provider at all.
  await writeFile(config, 'busybox:\n  version: 1.35.0\n  config: tiny.config\n  fallback: none\n');
  golden = join(root, 'golden', 'cache');
  const { r, s } = await build(golden, 'compile', ['--source', tarball]);
  expect(r.exitCode, r.stderr).toBe(0);
  goldenSummary = s;
  for (const kind of ['sources', 'trees', 'kconfig', 'installs']) expect(await verifyByHash(entryOf(golden, kind)), kind).toMatchObject({ ok: true });
}, TIMEOUT);

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

describe('corrupt cache', () => {
  it(
    'a truncated cached tarball is refetched; offline, the error names the corrupt entry',
    async ({ task }) => {
      const r = reliability(task, {
        area: 'corrupt cache',
        case: 'The cached busybox tarball cut to half its size.',
        expected: 'Warning names the entry; the tarball is fetched again and matches its pinned sha256. With no other source: exit 1 naming the corrupt entry.',
      });
      const cache = await copyOfGolden('tarball');
      const entry = entryOf(cache, 'sources');
      const cached = join(entry, TARBALL_NAME);
      await truncate(cached, (await stat(cached)).size >> 1);

      const { r: res, s } = await build(cache, 'source', ['--source', tarball]);
      expect(res.exitCode, res.stderr).toBe(0);
      const w = corruptWarning(s, entry, new RegExp(`\\(${TARBALL_NAME.replace(/\./g, '\\.')}: \\d+ bytes, was \\d+ bytes\\); fetching the tarball again$`));
      expect(stage(s, 'source')).toMatchObject({ status: 'done', cacheHit: false });
      expect(stage(s, 'source').outputs).toMatchObject({ provider: 'local', sha256: BUSYBOX_1_35_SHA256, path: cached });
      expect(await sha256File(cached)).toBe(BUSYBOX_1_35_SHA256);
      expect(await verifyByHash(entry)).toMatchObject({ ok: true });
      r.observe(`warning: ${shortly(w)}; refetched from --source, sha256 pinned value`);

      // Offline (no --source, fallback none, upstream unreachable): a clear error, nothing used.
      await truncate(cached, 1000);
      const off = await build(cache, 'source');
      expect(off.r.exitCode).toBe(1);
      const error = off.r.stderr.split('\n').find((l) => l.includes('error:')) ?? '';
      expect(error).toMatch(/busybox 1\.35\.0: no provider could supply the tarball/);
      expect(off.r.stderr).toMatch(new RegExp(`cache ${entry}: corrupt \\(${TARBALL_NAME.replace(/\./g, '\\.')}: 1000 bytes, was \\d+ bytes\\); discarded`));
      expect(existsSync(entry)).toBe(false);
      r.observe(`offline: exit 1, "${error.replace(/^.*error: /, '')}", the attempts list the corrupt cache entry`);
    },
    TIMEOUT,
  );

  it(
    'an install tree with a file removed is compiled again',
    async ({ task }) => {
      const r = reliability(task, {
        area: 'corrupt cache',
        case: 'bin/busybox deleted from a cached install tree.',
        expected: 'Warning names the entry and the missing file; only the compile runs again; the new tree is complete and verified.',
      });
      const cache = await copyOfGolden('installs-removed');
      const entry = entryOf(cache, 'installs');
      await rm(join(entry, 'root', 'bin', 'busybox'));

      const { r: res, s } = await build(cache, 'compile');
      expect(res.exitCode, res.stderr).toBe(0);
      const w = corruptWarning(s, entry, /\(root\/bin\/busybox: missing\); rebuilding$/);
      expect(statuses(s)).toMatchObject({ source: 'cached', extract: 'cached', kconfig: 'cached', compile: 'done' });
      expect(stage(s, 'compile').outputs.key).toBe(stage(goldenSummary, 'compile').outputs.key);
      expect(await verifyByHash(entry)).toMatchObject({ ok: true });
      const binary = join(entry, 'root', 'bin', 'busybox');
      expect((await execa(binary, ['echo', 'ok'])).stdout).toBe('ok');
      // The same tree as the good one: every path, type, mode and symlink; file sizes.
      const good = await describeTree(join(entryOf(golden, 'installs'), 'root'));
      expect(diffTrees(good, await describeTree(join(entry, 'root')), { ignore: ['sha256'] })).toEqual([]);
      r.observe(`warning: ${shortly(w)}; compile ran again (source, extract, kconfig cached); new tree verified, same paths as the good one`);
    },
    TIMEOUT,
  );

  it(
    'an install tree with a file changed in place (same size, same mtime) is compiled again',
    async ({ task }) => {
      const r = reliability(task, {
        area: 'corrupt cache',
        case: 'One byte of bin/busybox flipped in a cached install tree, size and mtime kept.',
        expected: 'Warning names the entry and the file; only the compile runs again; the damaged binary is never used.',
      });
      const cache = await copyOfGolden('installs-changed');
      const entry = entryOf(cache, 'installs');
      const binary = join(entry, 'root', 'bin', 'busybox');
      const { before, after } = await sameSizeEdit(binary);

      const { r: res, s } = await build(cache, 'compile');
      expect(res.exitCode, res.stderr).toBe(0);
      const w = corruptWarning(s, entry, /\(root\/bin\/busybox: sha256 differs\); rebuilding$/);
      expect(statuses(s)).toMatchObject({ kconfig: 'cached', compile: 'done' });
      const rebuilt = await sha256File(binary);
      expect(rebuilt).not.toBe(after);
      expect(await verifyByHash(entry)).toMatchObject({ ok: true });
      expect((await execa(binary, ['echo', 'ok'])).stdout).toBe('ok');
      // A second run uses the new entry as it is.
      const again = await build(cache, 'compile');
      expect(again.r.exitCode, again.r.stderr).toBe(0);
      expect(statuses(again.s)).toMatchObject({ compile: 'cached' });
      expect(warningsOf(again.s).filter((m) => m.startsWith('cache entry'))).toEqual([]);
      r.observe(`warning: ${shortly(w)}; compile ran again; damaged sha256 ${after.slice(0, 12)}… never used (good ${before.slice(0, 12)}…, rebuilt ${rebuilt.slice(0, 12)}…); next run cached`);
    },
    TIMEOUT,
  );

  it(
    'an extracted source tree with a file changed is extracted again before it is used',
    async ({ task }) => {
      const r = reliability(task, {
        area: 'corrupt cache',
        case: 'One byte of src/coreutils/echo.c flipped in a cached source tree (size and mtime kept), with the configure step to redo.',
        expected: 'The tree is hashed before it is copied: warning names the entry and the file; it is extracted again; the .config is the good one.',
      });
      const cache = await copyOfGolden('tree');
      const entry = entryOf(cache, 'trees');
      const file = join(entry, 'src', 'coreutils', 'echo.c');
      const { before } = await sameSizeEdit(file);
      await rm(entryOf(cache, 'kconfig'), { recursive: true });

      const { r: res, s } = await build(cache, 'compile');
      expect(res.exitCode, res.stderr).toBe(0);
      const w = corruptWarning(s, entry, /\(src\/coreutils\/echo\.c: sha256 differs\); extracting again$/);
      expect(statuses(s)).toMatchObject({ source: 'cached', kconfig: 'done', compile: 'cached' });
      expect(await sha256File(file)).toBe(before);
      expect(await verifyByHash(entry)).toMatchObject({ ok: true });
      expect(stage(s, 'kconfig').outputs.configSha256).toBe(stage(goldenSummary, 'kconfig').outputs.configSha256);
      // The same compile key as the good build: the damaged tree did not reach the configuration.
      expect(stage(s, 'compile').outputs.key).toBe(stage(goldenSummary, 'compile').outputs.key);
      r.observe(`warning: ${shortly(w)}; extracted again; echo.c back to its good sha256; .config and compile key the good ones`);
    },
    TIMEOUT,
  );

  it(
    'an extracted source tree without a manifest (left by an older domu) is extracted again, once',
    async ({ task }) => {
      const r = reliability(task, {
        area: 'corrupt cache',
        case: 'The manifest of a cached source tree removed, as an older domu left its entries.',
        expected: 'Warning says the entry has no manifest (older domu); the tree is extracted again once; the next run uses it.',
      });
      const cache = await copyOfGolden('legacy');
      const entry = entryOf(cache, 'trees');
      await rm(join(entry, MANIFEST_FILE));

      const { r: res, s } = await build(cache, 'extract');
      expect(res.exitCode, res.stderr).toBe(0);
      const w = corruptWarning(s, entry, /\(no manifest: written by an older version of domu\); extracting again$/);
      expect(statuses(s)).toMatchObject({ source: 'cached', extract: 'done' });
      expect(await verifyByHash(entry)).toMatchObject({ ok: true });
      expect(diffTrees(await describeTree(join(entryOf(golden, 'trees'), 'src')), await describeTree(join(entry, 'src')))).toEqual([]);
      const again = await build(cache, 'extract');
      expect(again.r.exitCode, again.r.stderr).toBe(0);
      expect(statuses(again.s)).toMatchObject({ extract: 'cached' });
      expect(warningsOf(again.s)).toEqual([]);
      r.observe(`warning: ${shortly(w)}; extracted again, same tree as the good one; next run: cached, no warning`);
    },
    TIMEOUT,
  );

  it(
    'an edited kconfig entry is configured again and never reaches the compile',
    async ({ task }) => {
      const r = reliability(task, {
        area: 'corrupt cache',
        case: 'The cached final .config edited by hand (CONFIG_ECHO turned off).',
        expected: 'Warning names the entry and the file; busybox is configured again to the good .config; the compile is still a cache hit on the good key.',
      });
      const cache = await copyOfGolden('kconfig');
      const entry = entryOf(cache, 'kconfig');
      const file = join(entry, 'config');
      const good = await readFile(file, 'utf8');
      expect(good).toContain('CONFIG_ECHO=y\n');
      await writeFile(file, good.replace('CONFIG_ECHO=y\n', '# CONFIG_ECHO is not set\n'));

      const { r: res, s } = await build(cache, 'compile');
      expect(res.exitCode, res.stderr).toBe(0);
      const w = corruptWarning(s, entry, /\(config: \d+ bytes, was \d+ bytes\); configuring again$/);
      expect(statuses(s)).toMatchObject({ kconfig: 'done', compile: 'cached' });
      expect(await readFile(file, 'utf8')).toBe(good);
      expect(await verifyByHash(entry)).toMatchObject({ ok: true });
      expect(stage(s, 'compile').outputs.key).toBe(stage(goldenSummary, 'compile').outputs.key);
      r.observe(`warning: ${shortly(w)}; configured again to the good .config; compile cached on the good key`);
    },
    TIMEOUT,
  );
});

describe('corrupt cache: kernel', () => {
  let kernelImage: string;
  let kernelEntry: string;

  beforeAll(async () => {
    const k = await getKernelPackage();
    kernelImage = k.image;
    kernelEntry = k.root;
  }, TIMEOUT);

  it(
    'a garbled module index is rebuilt from the modules, never trusted',
    async ({ task }) => {
      const r = reliability(task, {
        area: 'corrupt cache',
        case: "The cached module index (modinfo of the kernel's 4000 modules) replaced by valid JSON that maps xen_netfront to ext4.ko, then cut short.",
        expected: 'Warning names the entry each time; the index is scanned again from the modules; xen-netfront resolves to its own file.',
      });
      const cache = await copyOfGolden('modindex');
      const guest = join(root, 'modindex', 'guest.yaml');
      await writeFile(guest, `busybox:\n  version: 1.35.0\n  config: ${join(root, 'tiny', 'tiny.config')}\n  fallback: none\nkernel:\n  image: ${kernelImage}\n`);
      const modules = (c: string) => domuJson(['build', '--json', '--until', 'modules', '--config', guest, '--cache-dir', c, '--out', join(root, 'modindex', 'out'), '--jobs', '2']);
      const netfront = (s: Summary) => JSON.stringify(stage(s, 'modules').outputs).match(/kernel\/drivers\/net\/xen-netfront\.ko/) !== null;

      const first = await modules(cache);
      expect(first.r.exitCode, first.r.stderr).toBe(0);
      expect(netfront(first.s)).toBe(true);
      const entry = entryOf(cache, 'module-index');
      const index = join(entry, 'index.json');
      const good = await readFile(index, 'utf8');

      const lie = { version: 1, paths: [['xen_netfront', 'kernel/fs/ext4/ext4.ko']], aliases: [] };
      await writeFile(index, JSON.stringify(lie));
      const second = await modules(cache);
      expect(second.r.exitCode, second.r.stderr).toBe(0);
      const w = corruptWarning(second.s, entry, /\(index\.json: \d+ bytes, was \d+ bytes\); indexing the modules again$/);
      expect(netfront(second.s)).toBe(true);
      expect(await readFile(index, 'utf8')).toBe(good);

      await truncate(index, good.length >> 1);
      const third = await modules(cache);
      expect(third.r.exitCode, third.r.stderr).toBe(0);
      corruptWarning(third.s, entry, /\(index\.json: \d+ bytes, was \d+ bytes\); indexing the modules again$/);
      expect(netfront(third.s)).toBe(true);
      expect(await readFile(index, 'utf8')).toBe(good);
      expect(await verifyByHash(entry)).toMatchObject({ ok: true });
      r.observe(`warning: ${shortly(w)}; scanned again, index byte-identical to the good one, xen-netfront → kernel/drivers/net/xen-netfront.ko (same for the cut-short file)`);
    },
    TIMEOUT,
  );

  it(
    'a cached kernel package with a module cut short is fetched again',
    async ({ task }) => {
      const r = reliability(task, {
        area: 'corrupt cache',
        case: 'xen-netfront.ko cut to half its size in the cached, unpacked Debian kernel package.',
        expected: "Warning names the entry and the file; the package is downloaded again (its .deb checked against the archive index's SHA256) and unpacked; the module is the good one.",
      });
      const cache = await copyOfGolden('kernel');
      // The shared entry is copied in (no memo): the first run asks apt which package is current
      // today and uses the copy when it is that package, or downloads the new one when Debian's
      // archive moved on. The memo that run writes names the entry every later run looks up.
      await mkdir(join(cache, 'kernels'), { recursive: true });
      await execa('cp', ['-a', '--reflink=auto', kernelEntry, join(cache, 'kernels', basename(kernelEntry))]);
      const first = await build(cache, 'kernel');
      expect(first.r.exitCode, first.r.stderr).toBe(0);
      const memo = JSON.parse(await readFile(join(cache, 'kernel-memos', 'linux-image-amd64.json'), 'utf8')) as { package: string; version: string; key: string };
      expect(stage(first.s, 'kernel').outputs).toMatchObject({ origin: 'package', package: memo.package, version: memo.version });
      const entry = join(cache, 'kernels', memo.key);
      expect(await verifyByHash(entry)).toMatchObject({ ok: true });
      const rel = readdirSync(join(entry, 'lib', 'modules'))[0]!;
      const mod = `lib/modules/${rel}/kernel/drivers/net/xen-netfront.ko`;
      const goodSha = await sha256File(join(entry, mod));
      await truncate(join(entry, mod), (await stat(join(entry, mod))).size >> 1);

      const { r: res, s } = await build(cache, 'kernel');
      expect(res.exitCode, res.stderr).toBe(0);
      const w = corruptWarning(s, entry, new RegExp(`\\(${mod.replace(/[.]/g, '\\.')}: \\d+ bytes, was \\d+ bytes\\); fetching the package again$`));
      expect(stage(s, 'kernel').outputs).toMatchObject({ origin: 'package', package: memo.package, version: memo.version });
      expect(await readFile((s as Summary & { log: string }).log, 'utf8')).toMatch(/kernel: downloading linux-image-\S+ \S+/);
      expect(await sha256File(join(entry, mod))).toBe(goodSha);
      expect(await verifyByHash(entry)).toMatchObject({ ok: true });
      // The .debs it was unpacked from, proved against the archive's index.
      const debs = JSON.parse(await readFile(join(entry, 'domu-debs.json'), 'utf8')) as { package: string; sha256: string }[];
      expect(debs.map((d) => d.package)).toEqual([memo.package]);
      expect(debs[0]!.sha256).toMatch(/^[0-9a-f]{64}$/);
      r.observe(`warning: ${shortly(w)}; downloaded again (.deb sha256 = index), xen-netfront.ko back to its good sha256`);
    },
    TIMEOUT,
  );
});
