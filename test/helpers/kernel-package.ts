// The real Debian kernel (linux-image-amd64 → linux-image-<abi>-amd64), fetched through
// fetchKernelPackage into the cache shared by the test files of one machine, so that the
// ~70 MB package is downloaded once per machine. Its headers (linux-headers-<release> with
// -common and linux-kbuild, ~15 MB) likewise, for kbuild tests.
//
// The kernel is resolved through apt once per TEST RUN, not once a day: fetchKernelPackage's
// memo lives 24 h, and Debian's archive moves within a day (a new ABI, and bookworm-security
// drops the old one's headers), so a memo from an earlier run could name a kernel whose
// linux-headers-<release> the archive no longer has. A memo resolved before this run began is
// dropped first, so the kernel and its headers come from the same package index. "This run"
// begins in vitest's global setup, which all files of one run share. The first files of a run
// may race to refresh: each then runs apt itself and writes the same memo atomically.
import { readFile, rm } from 'node:fs/promises';
import { inject } from 'vitest';
import { join } from 'node:path';
import { CleanupRegistry } from '../../src/core/cleanup.js';
import { fetchKernelHeaders, type KernelHeaders } from '../../src/kernel/kbuild.js';
import { fetchKernelPackage, type KernelPackage } from '../../src/kernel/kernel.js';
import { TEST_CACHE_DIR } from './busybox-tarball.js';
import { sharedStageContext } from './context.js';

export const TEST_KERNEL_PACKAGE = 'linux-image-amd64';

/** fetchKernelPackage's memo for TEST_KERNEL_PACKAGE in the shared test cache. */
export const TEST_KERNEL_MEMO = join(TEST_CACHE_DIR, 'kernel-memos', `${TEST_KERNEL_PACKAGE}.json`);

/**
 * When this test run began (ms since the epoch), as test/helpers/global-setup.ts provides it to
 * every test file; this process's own start outside vitest (benchmarks).
 */
export function testRunStartMs(): number {
  try {
    return inject('testRunStart');
  } catch {
    return performance.timeOrigin;
  }
}

/** Drop the shared kernel memo when it was resolved before this test run began. */
async function dropMemoOfEarlierRun(): Promise<void> {
  let resolvedAt: unknown;
  try {
    resolvedAt = (JSON.parse(await readFile(TEST_KERNEL_MEMO, 'utf8')) as { resolvedAt?: unknown }).resolvedAt;
  } catch {
    return; // none (or garbled: fetchKernelPackage ignores it and asks apt)
  }
  if (typeof resolvedAt === 'number' && resolvedAt >= testRunStartMs()) return;
  await rm(TEST_KERNEL_MEMO, { force: true });
}

let pending: Promise<KernelPackage> | undefined;

export function getKernelPackage(): Promise<KernelPackage> {
  pending ??= (async () => {
    await dropMemoOfEarlierRun();
    const cleanup = new CleanupRegistry();
    try {
      return await fetchKernelPackage(sharedStageContext(TEST_CACHE_DIR, cleanup), { package: TEST_KERNEL_PACKAGE });
    } finally {
      await cleanup.runAll();
    }
  })();
  pending.catch(() => {
    pending = undefined;
  });
  return pending;
}

let pendingHeaders: Promise<KernelHeaders> | undefined;

/** The headers of getKernelPackage()'s kernel, in the shared test cache. */
export function getKernelHeaders(): Promise<KernelHeaders> {
  pendingHeaders ??= (async () => {
    const { release } = await getKernelPackage();
    const cleanup = new CleanupRegistry();
    try {
      return await fetchKernelHeaders(sharedStageContext(TEST_CACHE_DIR, cleanup), { release });
    } finally {
      await cleanup.runAll();
    }
  })();
  pendingHeaders.catch(() => {
    pendingHeaders = undefined;
  });
  return pendingHeaders;
}
