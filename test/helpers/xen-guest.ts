// Builds for the tests of `domu verify` on real Xen: the default guest (busybox 1.35.0 from the
// shared tarball, Debian's kernel package from the shared test cache) with the given --set
// values, and what those tests check around a run (--out unchanged).
import { readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { getBusyboxTarball, TEST_CACHE_DIR } from './busybox-tarball.js';
import { domuJson } from './cli.js';
import { getKernelPackage } from './kernel-package.js';

/** The default guest.yaml with the shared kernel; `sets` are --set values (e.g. xen.type=pv). */
export async function buildXenGuest(dir: string, name: string, sets: string[] = []): Promise<string> {
  const [kernel, tarball] = await Promise.all([getKernelPackage(), getBusyboxTarball()]);
  const yaml = join(dir, `${name}.yaml`);
  await writeFile(yaml, `busybox:\n  version: 1.35.0\nkernel:\n  image: ${kernel.image}\n`);
  const out = join(dir, name);
  const b = await domuJson(['build', '--json', '--config', yaml, '--cache-dir', TEST_CACHE_DIR, '--source', tarball, '--jobs', '2', '--out', out, ...sets.flatMap((s) => ['--set', s])]);
  if (b.r.exitCode !== 0) throw new Error(`the build ${name} failed:\n${b.r.stderr}`);
  return out;
}


/** Every file below `dir` with its inode, mtime, ctime and size: equal before and after → untouched. */
export async function identities(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) {
        const st = await stat(p);
        out[p.slice(dir.length + 1)] = `ino ${st.ino} mtime ${st.mtimeMs} ctime ${st.ctimeMs} size ${st.size}`;
      }
    }
  };
  await walk(dir);
  return out;
}

/** One check of a Xen run's JSON summary (domu verify, domu lab). */
export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

/** A phase timeout for tests: generous, since two test files may run nested Xens at once. */
export const XEN_TEST_TIMEOUT = ['--timeout', '300'];
