// The shared fixtures many test files start with, made once per test run by the global set-up
// (test/helpers/global-setup.ts), in a process of its own run the way the helpers run everywhere
// else (node + tsx), not inside vitest's main process:
//   node --import tsx test/helpers/prepare-fixtures.ts
import { TEST_CACHE_DIR } from './busybox-tarball.js';
import { getKernelPackage } from './kernel-package.js';
import { getStaticBusybox } from './static-busybox.js';

try {
  const [busybox, kernel] = await Promise.all([getStaticBusybox(), getKernelPackage()]);
  process.stderr.write(`prepare-fixtures: ${TEST_CACHE_DIR}: busybox ${busybox.binary}, kernel ${kernel.release}\n`);
} catch (e) {
  process.stderr.write(`prepare-fixtures: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
  process.exitCode = 1;
}
