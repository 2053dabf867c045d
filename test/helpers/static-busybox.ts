// A real static busybox 1.35.0 (glibc, the project's own busybox-config/static.fragment), built
// with the real extract, kconfig and compile stages into the test cache shared by the test files
// of one machine. The stages' own cache makes every later call (in any test file) a lookup: make
// runs once per machine, about 30–50 s.
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { execa } from 'execa';
import { join, relative } from 'node:path';
import { parseFragment } from '../../src/busybox/kconfig.js';
import { projectPath } from '../../src/core/paths.js';
import { CleanupRegistry } from '../../src/core/cleanup.js';
import { compileStage } from '../../src/stages/compile.js';
import { extractStage } from '../../src/stages/extract.js';
import { kconfigStage } from '../../src/stages/kconfig.js';
import { BUSYBOX_1_35_SHA256, getBusyboxTarball, TEST_CACHE_DIR } from './busybox-tarball.js';
import { sharedStageContext } from './context.js';

export interface StaticBusybox {
  /** The install tree (bin/ sbin/ usr/ linuxrc) in the cache; read-only. */
  installTree: string;
  /** `<installTree>/bin/busybox` */
  binary: string;
  /** The cache entries behind it, relative to the cache (`sources/<sha256>`, `trees/…`, `kconfig/…`, `installs/…`). */
  entries: string[];
}

let pending: Promise<StaticBusybox> | undefined;

export function getStaticBusybox(): Promise<StaticBusybox> {
  pending ??= (async () => {
    const tarball = await getBusyboxTarball();
    const cleanup = new CleanupRegistry();
    // A private work directory: two test files (two processes) may build at the same time, and
    // kconfig/compile use `<workDir>/busybox-<version>` as their build directory.
    await mkdir(join(TEST_CACHE_DIR, 'work'), { recursive: true });
    const workDir = await mkdtemp(join(TEST_CACHE_DIR, 'work', 'static-busybox-'));
    const ctx = { ...sharedStageContext(TEST_CACHE_DIR, cleanup), workDir };
    try {
      const x = await extractStage({ tarball, sha256: BUSYBOX_1_35_SHA256 }, ctx);
      const fragmentPath = projectPath('busybox-config', 'static.fragment');
      const k = await kconfigStage(
        {
          tree: x.tree,
          version: '1.35.0',
          tarballSha256: BUSYBOX_1_35_SHA256,
          source: { mode: 'fragment', path: fragmentPath, config: parseFragment(await readFile(fragmentPath, 'utf8'), fragmentPath) },
          toolchain: { libc: 'glibc' },
          compatHeader: projectPath('busybox-config', 'compat', 'stime.h'),
        },
        ctx,
      );
      const c = await compileStage(
        {
          tree: x.tree,
          version: '1.35.0',
          tarballSha256: BUSYBOX_1_35_SHA256,
          config: k.config,
          buildDir: k.buildDir,
          toolchain: k.toolchain,
          makeVars: k.makeVars,
          includedFilesHash: k.includedFilesHash,
        },
        ctx,
      );
      const entryOf = (path: string) => relative(TEST_CACHE_DIR, path).split('/').slice(0, 2).join('/');
      const entries = [entryOf(tarball), entryOf(x.tree), `kconfig/${k.key}`, entryOf(c.installTree)];
      return { installTree: c.installTree, binary: c.binary, entries };
    } finally {
      await cleanup.runAll();
      await rm(workDir, { recursive: true, force: true });
    }
  })();
  pending.catch(() => {
    pending = undefined;
  });
  return pending;
}

/**
 * A private cache that already holds the static busybox (tarball, source tree, kconfig and install
 * entries copied from the shared test cache): for test files that need a cache of their own (their
 * runs are killed, or they count what the cache holds) but do not test the cold compile itself,
 * which compile-real, the fault suite and the e2e tests do. A build with the project's fragment
 * and glibc finds every busybox stage in it.
 */
export async function seedCache(cacheDir: string): Promise<void> {
  const { entries } = await getStaticBusybox();
  for (const entry of entries) {
    await mkdir(join(cacheDir, entry, '..'), { recursive: true });
    // Copies, not links: a test that damages its cache must not reach the shared one. cp -a keeps
    // every mtime (directories' and symlinks' too), which the entries' manifests record.
    await execa('cp', ['-a', '--reflink=auto', join(TEST_CACHE_DIR, entry), join(cacheDir, entry)]);
  }
}
