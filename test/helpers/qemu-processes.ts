// QEMU processes of a test, found by a path their command line names (each test's paths are
// unique): what must be gone after a run, a failure or an interrupt.
import { execa } from 'execa';

export async function qemusFor(path: string): Promise<string[]> {
  const r = await execa('pgrep', ['-a', '-f', `qemu-system-x86_64 .*${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`], { reject: false });
  return String(r.stdout).split('\n').filter(Boolean);
}
