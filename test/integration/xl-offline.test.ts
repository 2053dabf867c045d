// Debian's real `xl` (xen-utils-<major>.<minor>, the archive's current one) parsing domain
// configs without a hypervisor, through our LD_PRELOAD library (test/helpers/xl.ts,
// test/fixtures/xl-offline/). Proves that the harness really parses: values come back as
// written, at the JSON paths documented in the helper, and the rejections of facts.md fail with
// a non-zero exit and xl's message.
import { createHash } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';
import { TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { tempDir } from '../helpers/context.js';
import { getXl, XEN_UTILS_RE, XL_OFFLINE_SOURCE, type XlOffline, type XlParseResult } from '../helpers/xl.js';

let xl: XlOffline;
/** The Xen release of the fetched tools, `<major>.<minor>` (4.17 in bookworm), from the package's name. */
let xenRelease: string;
let dir: string;
const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };

beforeAll(async () => {
  xl = await getXl();
  xenRelease = XEN_UTILS_RE.exec(xl.package)?.[1] ?? `(not xen-utils-<major>.<minor>: ${xl.package})`;
  dir = await tempDir('domu-xl-');
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

let n = 0;
/** Write `text` as a config file and parse it with xl. */
async function parse(text: string, opts: { globalConfig?: string } = {}): Promise<XlParseResult> {
  const path = join(dir, `cfg-${++n}.cfg`);
  await writeFile(path, text);
  return xl.parse(path, opts);
}

/** The lines xl writes to stderr besides its "Parsing config from <file>" banner. */
const complaints = (r: XlParseResult) =>
  r.stderr
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith('Parsing config from '))
    .join('\n');

const PV = `# the project's guest, in xl syntax
name = "busybox"
memory = 512
maxmem = 768
vcpus = 2
kernel = "/boot/vmlinuz-6.1.0-41-amd64"
ramdisk = "/boot/initrd.img-6.1.0-41-amd64"
cmdline = "root=/dev/xvda ro console=hvc0"
disk = [ 'format=raw, vdev=xvda, access=rw, target=/scsistore/busybox.img' ]
vif = [ 'mac=00:16:3e:12:34:56, bridge=xenbr0' ]
on_poweroff = "preserve"
on_reboot = "restart"
on_crash = "coredump-destroy"
`;

// /work/shared/reference-lab.md, verbatim: the xm (xend) dialect.
const REFERENCE_LAB = `kernel = "/boot/vmlinuz-2.6.32-504.el6.x86_64"
ramdisk = "/boot/initramfs-2.6.32-504.el6.x86_64.img"
name = "busybox"
memory = "512"
vcpus = 1
disk = ['file:/scsistore/busybox.img,xvda,w',]
root = "/dev/xvda ro"
extra = "selinux=0 init=/bin/sh"
vif = ['bridge=xenbr0',]
on_crash = "destroy"
on_reboot = "destroy"
on_shutdown = "destroy"
`;

const MINIMAL = 'name = "a"\nmemory = 64\nkernel = "/k"\n';

describe('the harness (Debian xen-utils-<major>.<minor> unpacked into the test cache, our preload)', () => {
  it('holds xl, the libraries of the same Xen build and its headers in one cache entry', async () => {
    expect(xl.package).toMatch(XEN_UTILS_RE);
    // The package's name and its Debian version agree on the Xen release.
    expect(xl.xenVersion).toMatch(new RegExp(`^${xenRelease.replace(/\./g, '\\.')}(\\.\\d+)?$`));
    expect(xl.root.startsWith(join(TEST_CACHE_DIR, 'xl-offline'))).toBe(true);
    const names = xl.packages.map((p) => p.package);
    for (const p of [`xen-utils-${xenRelease}`, `libxenmisc${xenRelease}`, 'libxenstore4', 'libxentoollog1', 'libxencall1', 'libxen-dev', 'xen-utils-common']) expect(names).toContain(p);
    // From the source package xen at xl's own version, or a library this machine does not have.
    const foreign = xl.packages.filter((p) => p.source !== 'xen');
    for (const p of xl.packages.filter((q) => q.source === 'xen')) expect(p.version, p.package).toBe(xl.version);
    const status = await run(env, 'dpkg-query', ['-W', '-f=${Package} ${db:Status-Abbrev}\n', ...names], { okExitCodes: [0, 1] });
    const installed = status.stdout.split('\n').filter((l) => /^\S+ ii/.test(l)).map((l) => l.split(' ')[0]);
    expect(installed).toEqual([]); // nothing of it is installed on the system
    for (const p of foreign) expect(p.package).toMatch(/^lib/);
    expect(xl.packages.every((p) => p.size > 0)).toBe(true);
  });

  it('resolves every Xen library of xl inside the entry', async () => {
    const r = await run(env, 'ldd', [xl.xl], { env: { LD_LIBRARY_PATH: xl.env.LD_LIBRARY_PATH } });
    expect(r.stdout).not.toMatch(/not found/);
    const xen = r.stdout.split('\n').filter((l) => /^\s*lib(xen|xl)/.test(l));
    expect(xen.map((l) => l.trim().split(/\s+/)[0])).toEqual(expect.arrayContaining([`libxenlight.so.${xenRelease}`, `libxlutil.so.${xenRelease}`, `libxenctrl.so.${xenRelease}`, 'libxenstore.so.4', 'libxentoollog.so.1']));
    for (const l of xen) expect(l.split('=>')[1]?.trim().startsWith(xl.libDir), l).toBe(true);
  });

  it('builds the preload from the current xl-offline.c and exports exactly the faked functions', async () => {
    expect(xl.preloadSourceSha256).toBe(createHash('sha256').update(await readFile(XL_OFFLINE_SOURCE)).digest('hex'));
    expect(xl.preload.startsWith(xl.root)).toBe(true);
    const nm = await run(env, 'nm', ['-D', '--defined-only', xl.preload]);
    const exported = nm.stdout
      .split('\n')
      .filter((l) => / T /.test(l))
      .map((l) => l.split(' ').pop())
      .sort();
    expect(exported).toEqual(
      [
        'libxl_get_max_cpus',
        'libxl_get_max_nodes',
        'libxl_get_physinfo',
        'libxl_get_version_info',
        'libxl_read_file_contents',
        'xc_interface_close',
        'xc_interface_open',
        'xs_close',
        'xs_open',
      ].sort(),
    );
  });

  it('without the preload, the same xl stops at context creation (no hypervisor here)', async () => {
    const cfg = join(dir, 'no-preload.cfg');
    await writeFile(cfg, MINIMAL);
    const r = await run(env, xl.xl, ['-N', 'create', cfg], { env: { ...xl.env, LD_PRELOAD: '' }, okExitCodes: [1] });
    expect(r.stderr).toContain('cannot init xl context');
    expect(r.stdout).toBe('');
  });
});

describe('xl -N create on a valid PV config (xl syntax)', () => {
  it('gives JSON with every value as written', async () => {
    const r = await parse(PV);
    expect(complaints(r)).toBe('');
    expect(r).toMatchObject({ ok: true, exitCode: 0 });
    const j = r.json;
    expect(j.c_info.name).toBe('busybox');
    expect(j.c_info.type).toBe('pv'); // the default type
    expect(j.b_info.target_memkb).toBe(512 * 1024); // memory is MiB in xl.cfg, KiB in the JSON
    expect(j.b_info.max_memkb).toBe(768 * 1024);
    expect(j.b_info.max_vcpus).toBe(2);
    expect(j.b_info.avail_vcpus).toEqual([0, 1]);
    expect(j.b_info.kernel).toBe('/boot/vmlinuz-6.1.0-41-amd64');
    expect(j.b_info.ramdisk).toBe('/boot/initrd.img-6.1.0-41-amd64');
    expect(j.b_info.cmdline).toBe('root=/dev/xvda ro console=hvc0');
    expect(j.disks).toEqual([{ pdev_path: '/scsistore/busybox.img', vdev: 'xvda', format: 'raw', readwrite: 1 }]);
    expect(j.nics).toHaveLength(1);
    expect(j.nics[0]).toMatchObject({ mac: '00:16:3e:12:34:56', bridge: 'xenbr0' });
    expect(j.on_poweroff).toBe('preserve');
    expect(j.on_reboot).toBe('restart');
    expect(j.on_crash).toBe('coredump_destroy');
  });

  it('omits fields that have their libxl default (destroy, read-only, no maxmem)', async () => {
    const r = await parse(
      `${MINIMAL}on_poweroff = "destroy"\non_crash = "destroy"\ndisk = [ 'format=raw, vdev=xvda, access=ro, target=/img' ]\nvif = [ 'bridge=xenbr0' ]\n`,
    );
    expect(r.ok).toBe(true);
    expect(r.json).not.toHaveProperty('on_poweroff');
    expect(r.json).not.toHaveProperty('on_crash');
    expect(r.json.on_reboot).toBe('restart'); // xl's own default, so it is written out
    expect(r.json.disks[0]).toEqual({ pdev_path: '/img', vdev: 'xvda', format: 'raw' });
    expect(r.json.nics[0]).not.toHaveProperty('mac');
    expect(r.json.b_info.max_memkb).toBe(r.json.b_info.target_memkb);
  });

  it('reads the global config given instead of /etc/xen/xl.conf', async () => {
    const global = join(dir, 'xl.conf');
    await writeFile(global, 'vif.default.bridge = "xenbr9"\n');
    const cfg = `${MINIMAL}vif = [ 'mac=00:16:3e:00:00:01' ]\n`;
    expect((await parse(cfg, { globalConfig: global })).json.nics[0].bridge).toBe('xenbr9');
    expect((await parse(cfg)).json.nics[0]).not.toHaveProperty('bridge'); // Debian's xl.conf sets nothing
  });
});

describe('xl -N create on a PVH config (type = "pvh", the same keys)', () => {
  it('gives type pvh with kernel, ramdisk, cmdline, disk and vif as written', async () => {
    const r = await parse(PV.replace('vcpus = 2\n', 'vcpus = 2\ntype = "pvh"\n'));
    expect(complaints(r)).toBe('');
    expect(r).toMatchObject({ ok: true, exitCode: 0 });
    const j = r.json;
    expect(j.c_info.type).toBe('pvh');
    expect(j.b_info.kernel).toBe('/boot/vmlinuz-6.1.0-41-amd64');
    expect(j.b_info.ramdisk).toBe('/boot/initrd.img-6.1.0-41-amd64');
    expect(j.b_info.cmdline).toBe('root=/dev/xvda ro console=hvc0');
    expect(j.disks).toEqual([{ pdev_path: '/scsistore/busybox.img', vdev: 'xvda', format: 'raw', readwrite: 1 }]);
    expect(j.nics[0]).toMatchObject({ mac: '00:16:3e:12:34:56', bridge: 'xenbr0' });
  });

  it('type = "pv" is written out the same way', async () => {
    const r = await parse(PV.replace('vcpus = 2\n', 'vcpus = 2\ntype = "pv"\n'));
    expect(r).toMatchObject({ ok: true, exitCode: 0 });
    expect(r.json.c_info.type).toBe('pv');
  });
});

describe("the reference lab's xm-dialect config", () => {
  it('is accepted: file: is stripped, root + extra become cmdline, on_shutdown is ignored', async () => {
    const r = await parse(REFERENCE_LAB);
    expect(r).toMatchObject({ ok: true, exitCode: 0 });
    expect(complaints(r)).toBe(''); // not a word about root, extra, on_shutdown or the positional disk
    const j = r.json;
    expect(j.c_info.name).toBe('busybox');
    expect(j.b_info.target_memkb).toBe(524288); // memory = "512" (a string) is read as a number
    expect(j.b_info.max_vcpus).toBe(1);
    expect(j.b_info.kernel).toBe('/boot/vmlinuz-2.6.32-504.el6.x86_64');
    expect(j.b_info.ramdisk).toBe('/boot/initramfs-2.6.32-504.el6.x86_64.img');
    expect(j.b_info.cmdline).toBe('root=/dev/xvda ro selinux=0 init=/bin/sh');
    expect(j.disks).toEqual([{ pdev_path: '/scsistore/busybox.img', vdev: 'xvda', format: 'raw', readwrite: 1 }]);
    expect(j.nics).toEqual([{ devid: 0, bridge: 'xenbr0' }]); // no mac: xl generates one at create time
    for (const k of ['on_poweroff', 'on_reboot', 'on_crash']) expect(j, k).not.toHaveProperty(k); // all "destroy"
  });

  it('on_shutdown has no effect where on_poweroff does', async () => {
    const xm = await parse(REFERENCE_LAB.replace('on_shutdown = "destroy"', 'on_shutdown = "preserve"'));
    expect(xm.ok).toBe(true);
    expect(xm.json).not.toHaveProperty('on_poweroff');
    const xlStyle = await parse(REFERENCE_LAB.replace('on_shutdown = "destroy"', 'on_poweroff = "preserve"'));
    expect(xlStyle.json.on_poweroff).toBe('preserve');
  });
});

describe('rejections: a non-zero exit and a message', () => {
  const rejects = async (text: string, message: RegExp) => {
    const r = await parse(text);
    expect(r.ok).toBe(false);
    expect(r.exitCode).not.toBe(0);
    expect(r.json).toBeUndefined();
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
    return r;
  };

  it('a syntax error, with file and line', async () => {
    const r = await rejects(`${MINIMAL}vcpus = = 2\n`, /:4: config parsing error near `=': syntax error/);
    expect(r.stderr).toMatch(/cfg-\d+\.cfg:4:/);
  });

  it('bad disk specs', async () => {
    await rejects(`${MINIMAL}disk = [ 'format=raw, vdev=xvda, acces=rw, target=/img' ]\n`, /error in disk specification: unknown parameter/);
    await rejects(`${MINIMAL}disk = [ 'format=bogus, vdev=xvda, target=/img' ]\n`, /error in disk specification: unknown value for format/);
  });

  it('a PV config without kernel', async () => {
    await rejects('name = "a"\nmemory = 64\nvcpus = 1\n', /Neither kernel nor bootloader specified/);
  });

  it('no name, an unknown type', async () => {
    await rejects('memory = 64\nkernel = "/k"\n', /Domain name must be specified/);
    await rejects(`${MINIMAL}type = "xyz"\n`, /Invalid domain type xyz/);
  });

  it('a config file that does not exist', async () => {
    const r = await xl.parse(join(dir, 'missing.cfg'));
    expect(r.ok).toBe(false);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toContain(`${join(dir, 'missing.cfg')}: No such file or directory`);
  });
});

describe('what xl only warns about or ignores', () => {
  it('a bad number and an unknown vif key warn; an unknown top-level key is ignored', async () => {
    const r = await parse(`name = "a"\nmemory = "lots"\nkernel = "/k"\nvif = [ 'mac=00:16:3e:00:00:01, bridgee=xenbr0' ]\nno_such_key = 1\n`);
    expect(r).toMatchObject({ ok: true, exitCode: 0 });
    expect(r.stderr).toMatch(/warning: parameter `memory' is not a valid number/);
    expect(r.stderr).toMatch(/unrecognized argument `bridgee=xenbr0'/);
    expect(r.stderr).not.toMatch(/no_such_key/);
    expect(r.json.nics[0]).toEqual({ devid: 0, mac: '00:16:3e:00:00:01' });
  });
});
