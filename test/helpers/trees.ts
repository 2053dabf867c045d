// Synthetic staging trees for image tests and benchmarks.
import { randomBytes } from 'node:crypto';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * A busybox-like staging tree: one 2.3 MB "binary", 400 symlinks to it, 20 small files;
 * `randomMiB` adds an incompressible file of that size (to fill a small file system).
 */
export async function busyboxLikeTree(dir: string, extra: { randomMiB?: number } = {}): Promise<string> {
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc/init.d', 'dev', 'proc', 'sys', 'tmp', 'root', 'lib/modules']) await mkdir(join(dir, d), { recursive: true });
  await writeFile(join(dir, 'bin/busybox'), randomBytes(2_300_000), { mode: 0o755 });
  for (let i = 0; i < 100; i++) {
    await symlink('busybox', join(dir, `bin/app${i}`));
    await symlink('../bin/busybox', join(dir, `sbin/app${i}`));
    await symlink('../../bin/busybox', join(dir, `usr/bin/app${i}`));
    await symlink('../../bin/busybox', join(dir, `usr/sbin/app${i}`));
  }
  for (let i = 0; i < 20; i++) await writeFile(join(dir, `etc/file${i}`), `# setting ${i}\n`.repeat(20));
  if (extra.randomMiB) await writeFile(join(dir, 'random.bin'), randomBytes(extra.randomMiB * 1048576));
  return dir;
}
