// The reference lab's busybox 1.22.1, for tests. Its official tarball cannot be downloaded here;
// ../shared/sources/busybox-1.22.1.tar.bz2 is the same release tree made from upstream's git tag
// (its README gives provenance and sha256), but not byte-identical, so the product's pin
// (busybox-config/releases.hash) rightly refuses it as "1.22.1".
//
// A test vouches for that file the way only a test can: it runs a copy of domu whose releases
// table names the git-tag tarball's sha256 for 1.22.1 instead of the official one. The copy is
// the project's own code and data in a temp directory (the project root is found from the code's
// location, so the copy reads its own table); nothing in the product learns of it, and the real
// domu keeps refusing the file.
import { cp, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { sha256File } from '../../src/core/hash.js';
import { PROJECT_ROOT } from '../../src/core/paths.js';
import { tempDir } from './context.js';

/** Where the shared sources are: `../shared/sources` beside the checkout (CI has it), or $DOMU_SHARED_DIR/sources. */
export const SHARED_SOURCES = join(process.env.DOMU_SHARED_DIR ?? join(PROJECT_ROOT, '..', 'shared'), 'sources');

export const BUSYBOX_1_22_1_GIT = {
  path: join(SHARED_SOURCES, 'busybox-1.22.1.tar.bz2'),
  /** From ../shared/sources/README.md: `git archive --prefix=busybox-1.22.1/ 1_22_1 | bzip2 -9`, commit d9e0c438e10e. */
  sha256: '736811779d88364087e41abff8e69d67e9edd30f575973189dab0238d03d51b8',
} as const;

/** Why the 1.22.1 tests cannot run here, or undefined when they can. */
export function busybox1221Missing(): string | undefined {
  if (!existsSync(BUSYBOX_1_22_1_GIT.path)) return `${BUSYBOX_1_22_1_GIT.path} is absent (the shared sources beside the checkout; set DOMU_SHARED_DIR to their parent)`;
  return undefined;
}

/** The file's sha256 must be the one its README states: otherwise the test vouches for nothing. */
export async function checkVouchedFile(): Promise<void> {
  const got = await sha256File(BUSYBOX_1_22_1_GIT.path);
  if (got !== BUSYBOX_1_22_1_GIT.sha256) throw new Error(`${BUSYBOX_1_22_1_GIT.path}: sha256 ${got}, expected ${BUSYBOX_1_22_1_GIT.sha256} (see its README)`);
}

/**
 * What the project itself copies to run as another domu: the compiled CLI and its data (no src/:
 * bin/domu.js then has no sources to compare the build with).
 */
const COPIED = ['bin', 'build', 'busybox-config', 'rootfs-skel', 'xen-configs', 'initramfs', 'scripts', 'package.json', 'guest.yaml', 'rootfs-devices.txt'];

let pending: Promise<string> | undefined;
let top: string | undefined;

/**
 * The root of a copy of the project whose releases table vouches for the git-tag 1.22.1 tarball
 * (one per test process). Every other line of the table is the project's.
 */
export function vouchedProjectRoot(): Promise<string> {
  pending ??= (async () => {
    await checkVouchedFile();
    top = await tempDir('domu-vouched-');
    const root = join(top, 'domu-builder');
    await mkdir(root);
    for (const name of COPIED) await cp(join(PROJECT_ROOT, name), join(root, name), { recursive: true });
    await symlink(join(PROJECT_ROOT, 'node_modules'), join(root, 'node_modules'));
    const table = join(root, 'busybox-config', 'releases.hash');
    const text = await readFile(table, 'utf8');
    const line = /^sha256\s+([0-9a-f]{64})\s+busybox-1\.22\.1\.tar\.bz2$/m;
    if (!line.test(text)) throw new Error(`${table}: no line for busybox 1.22.1 to vouch over`);
    await writeFile(table, text.replace(line, `sha256  ${BUSYBOX_1_22_1_GIT.sha256}  busybox-1.22.1.tar.bz2`));
    return root;
  })();
  return pending;
}

/** Remove this process's copy (a few MB in the temp directory); the next call makes a new one. */
export async function removeVouchedProject(): Promise<void> {
  const dir = top;
  pending = undefined;
  top = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
}
