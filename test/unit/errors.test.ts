// Node errno values a user can cause (asDomuError), EFBIG wherever it hides (stage-errors), and
// the file size probe of --out (core/filesize.ts) on the real file system of TMPDIR.
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asDomuError, DomuError } from '../../src/core/errors.js';
import { exactSize, imageTooBigMessage, probeFileSize } from '../../src/core/filesize.js';
import { mountOf } from '../../src/core/mounts.js';
import { PROJECT_ROOT } from '../../src/core/paths.js';
import { explainStageError, FileTooBigError, findTooBig, NoSpaceError, tooBigError } from '../../src/core/stage-errors.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'domu-errors-'));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The error a Node fs call rejects with. */
async function fsError(p: Promise<unknown>): Promise<NodeJS.ErrnoException> {
  return p.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (e: NodeJS.ErrnoException) => e,
  );
}

/** An error shaped as Node makes them (code, errno, syscall, maybe path). */
const errno = (code: string, syscall: string, path?: string) => Object.assign(new Error(`${code}: ${syscall}${path ? ` '${path}'` : ''}`), { code, syscall, ...(path ? { path } : {}) });

describe('asDomuError: errno values a user can cause are one line, not an internal error', () => {
  it('ENAMETOOLONG (a 300-byte --out)', async () => {
    const long = join(dir, 'x'.repeat(300));
    const e = asDomuError(await fsError(mkdir(long, { recursive: true })));
    expect(e).toBeInstanceOf(DomuError);
    expect((e as DomuError).message).toBe(`cannot mkdir ${long}: the name is too long (at most 255 bytes a name, 4095 a path)`);
    expect((e as DomuError).hint).toMatch(/shorter names/);
  });

  it('ELOOP (a symlink that leads to itself)', async () => {
    await symlink('loop', join(dir, 'loop'));
    const e = asDomuError(await fsError(mkdir(join(dir, 'loop', 'out'), { recursive: true })));
    expect((e as DomuError).message).toMatch(/^cannot mkdir \/.*\/loop\/out: too many levels of symbolic links/);
  });

  it.each([
    ['EFBIG', 'ftruncate', /^cannot ftruncate: the file is too large for its file system \(or for ulimit -f\)$/, /smaller image\.size/],
    ['EMFILE', 'open', /^cannot open: too many open files in this process \(ulimit -n\)$/, /ulimit -n/],
    ['EIO', 'read', /^cannot read: input\/output error/, /dmesg/],
  ])('%s without a path (a file descriptor call)', (code, syscall, message, hint) => {
    const e = asDomuError(errno(code, syscall));
    expect((e as DomuError).message).toMatch(message);
    expect((e as DomuError).hint).toMatch(hint);
    expect((e as DomuError).exitCode).toBe(1);
  });

  it.each(['ENOTEMPTY', 'EBUSY', 'ETXTBSY', 'ENXIO', 'ESTALE', 'ENFILE'])('%s with a path', (code) => {
    const e = asDomuError(errno(code, 'rename', '/x/y'));
    expect(e).toBeInstanceOf(DomuError);
    expect((e as DomuError).message).toMatch(/^cannot rename \/x\/y: \S/);
  });

  it('leaves what is not about the machine alone (a bug stays a bug)', () => {
    for (const e of [errno('EXDEV', 'rename', '/a'), errno('EINVAL', 'read', '/a'), errno('ENOENT', 'open'), new TypeError('x is undefined')]) expect(asDomuError(e)).toBe(e);
  });
});

describe('EFBIG in a stage', () => {
  const out = '/srv/domu/out';
  const places = { cacheDir: '/srv/domu/cache', outDir: out };

  it('is found in the cause chain and in a program\'s stderr, with the path', () => {
    const inner = errno('EFBIG', 'write', `${out}/busybox.img`);
    expect(findTooBig(new DomuError('wrapped', { cause: inner }))).toEqual({ path: `${out}/busybox.img` });
    const program = Object.assign(new Error('command failed: zstd -o /srv/dist/busybox.img.zst'), { stderr: "zstd: error 70 : Write error : cannot write block : File too large '/srv/dist/busybox.img.zst'" });
    expect(findTooBig(program)).toEqual({ path: '/srv/dist/busybox.img.zst' });
    const stopped = Object.assign(new Error('mke2fs -t ext4 -F /srv/domu/out/.tmp-busybox.img-1-ab failed (killed by SIGXFSZ)'), { stderr: '' });
    expect(findTooBig(stopped)).toEqual({ path: '/srv/domu/out/.tmp-busybox.img-1-ab' });
    expect(findTooBig(errno('ENOSPC', 'write', '/a'))).toBeUndefined();
  });

  it('becomes one line naming --out, the stage and what to do (the ftruncate of the image has no path)', () => {
    const e = explainStageError('image', errno('EFBIG', 'ftruncate'), places);
    expect(e).toBeInstanceOf(FileTooBigError);
    expect((e as FileTooBigError).message).toMatch(
      /^file too large for \/srv\/domu\/out \(the out directory, --out\) while building the image: (its file system \(\S+\) cannot hold a file that large|this process may not write .*ulimit -f.*); .*choose a smaller image\.size, or use --out on a file system that holds bigger files$/,
    );
    expect((e as FileTooBigError).message).not.toContain('\n');
  });

  it('names the cache for a cache stage, and leaves ENOSPC to the full-disk line', () => {
    expect((explainStageError('compile', errno('EFBIG', 'write', '/srv/domu/cache/trees/x/busybox'), places) as Error).message).toMatch(/^file too large for \/srv\/domu\/cache \(the cache, --cache-dir\) while compiling busybox: /);
    expect(explainStageError('image', errno('ENOSPC', 'write', `${out}/x`), places)).toBeInstanceOf(NoSpaceError);
  });

  it('the store and the release directory say what to do there', () => {
    expect(tooBigError({ dir: dir, role: 'store', doing: 'publishing busybox.img', size: 2 ** 44, note: 'the store is unchanged' }).message).toMatch(
      /^file too large for \/.* \(the store\) while publishing busybox\.img: (its file system \(\S+\) cannot hold a file of 16 TiB|this process .*); the store is unchanged; .*choose a smaller image\.size, or a store on a file system that holds bigger files$/,
    );
    expect(tooBigError({ dir: dir, role: 'dist', doing: 'writing the release r' }).message).toMatch(/use --dist on a file system that holds bigger files$/);
  });
});

describe('sizes and the image.size line', () => {
  it.each([
    [2 ** 44 - 4096, '16 TiB - 4 KiB'],
    [2 ** 44, '16 TiB'],
    [20 * 2 ** 40, '20 TiB'],
    [2 ** 32 - 1, '4 GiB - 1 byte'],
    [1536 * 2 ** 20, '1536 MiB'],
    [2 ** 53 - 1, '8 PiB - 1 byte'],
    [1, '1 byte'],
  ])('%d bytes is %s', (n, text) => expect(exactSize(n)).toBe(text));

  it('names the size, --out, its type, the limit, a size that fits and another file system', () => {
    expect(imageTooBigMessage({ size: 100 * 2 ** 40, dir: '/srv/out', where: 'out', limit: 2 ** 44 - 4096, rlimit: undefined, type: 'ext4' })).toBe(
      'image.size 100 TiB is larger than the biggest file /srv/out (ext4) can hold (16 TiB - 4 KiB); choose a smaller image.size (e.g. --set image.size=15T) or an --out on a file system that holds bigger files',
    );
    expect(imageTooBigMessage({ size: 2 ** 33, dir: '/scsistore', where: 'store', limit: 2 ** 32 - 1, rlimit: undefined, type: 'vfat' })).toBe(
      'image.size 8 GiB is larger than the biggest file the store /scsistore (vfat) can hold (4 GiB - 1 byte); choose a smaller image.size (e.g. --set image.size=3G) or a store on a file system that holds bigger files',
    );
    expect(imageTooBigMessage({ size: 2 ** 31, dir: '/srv/out', where: 'out', limit: 2 ** 30, rlimit: 2 ** 30, type: 'ext4' })).toBe(
      'image.size 2 GiB is larger than the biggest file this process may write (ulimit -f: 1 GiB); raise the limit (ulimit -f unlimited) or choose a smaller image.size (e.g. --set image.size=1G)',
    );
  });
});

describe('probeFileSize on the real file system', () => {
  it('a size that fits: true, and the temporary file is gone and was registered first', async () => {
    const d = join(dir, 'fits');
    await mkdir(d);
    const registered: string[] = [];
    let released = 0;
    const p = await probeFileSize(d, 2 ** 30, (path) => {
      registered.push(path);
      return () => void released++;
    });
    expect(p).toEqual({ fits: true });
    expect(registered).toHaveLength(1);
    expect(registered[0]).toMatch(/\/\.tmp-\.domu-size-probe-\d+-[0-9a-f]+$/);
    expect(released).toBe(1);
    expect(await readdir(d)).toEqual([]);
  });

  const ext4With4k = (() => {
    const m = mountOf(tmpdir());
    return m?.type === 'ext4' && statfsSync(tmpdir()).bsize === 4096;
  })();

  it.runIf(ext4With4k)('ext4 (4 KiB blocks, TMPDIR here): 16 TiB does not fit, the limit is bisected to 16 TiB - 4 KiB', async () => {
    const d = join(dir, 'ext4');
    await mkdir(d);
    for (const size of [2 ** 44, 20 * 2 ** 40, 100 * 2 ** 40]) {
      expect(await probeFileSize(d, size, () => () => {})).toEqual({ fits: false, limit: 2 ** 44 - 4096 });
    }
    expect(await probeFileSize(d, 2 ** 44 - 4096, () => () => {})).toEqual({ fits: true });
    expect(await readdir(d)).toEqual([]);
  });

  it('ulimit -f (any file system): the limit found is the process limit, and the line says so', async () => {
    const d = join(dir, 'rlimit');
    await mkdir(d);
    const script = join(dir, 'probe.mts');
    const lib = join(PROJECT_ROOT, 'src/core/filesize.ts');
    await writeFile(
      script,
      `import { checkImageFits, probeFileSize } from ${JSON.stringify(lib)};\n` +
        `const p = await probeFileSize(${JSON.stringify(d)}, 2 ** 31, () => () => {});\n` +
        `const e = await checkImageFits({ dir: ${JSON.stringify(d)}, size: 2 ** 31, where: 'out', register: () => () => {} }).catch((x) => x);\n` +
        `console.log(JSON.stringify({ p, message: e?.message, exitCode: e?.exitCode }));\n`,
    );
    const r = await execa('prlimit', [`--fsize=${2 ** 30}`, '--', process.execPath, '--import', 'tsx', script], { cwd: PROJECT_ROOT, env: { NODE_OPTIONS: '' } });
    const got = JSON.parse(r.stdout) as { p: unknown; message: string; exitCode: number };
    expect(got.p).toEqual({ fits: false, limit: 2 ** 30 });
    expect(got.exitCode).toBe(2);
    expect(got.message).toBe('image.size 2 GiB is larger than the biggest file this process may write (ulimit -f: 1 GiB); raise the limit (ulimit -f unlimited) or choose a smaller image.size (e.g. --set image.size=1G)');
    expect(await readdir(d)).toEqual([]);
  }, 30_000);
});
