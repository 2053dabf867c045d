// The hypervisor a Dom0 runs, as `xl info` tells it, and what that means for the guest's type:
// a PV guest live-migrates only with shadow paging (log-dirty mode for PV); Debian's Xen is built
// without it (`# CONFIG_SHADOW_PAGING is not set`), so there `xl migrate` of a PV guest fails with
// "Failed to enable logdirty: 95". PVH guests use HAP's log-dirty and migrate.
import { run, which, type ExecEnv } from '../core/exec.js';
import { errorMessage } from '../core/errors.js';

export interface Hypervisor {
  /** xen_version, e.g. 4.17.7 */
  version: string;
  /** virt_caps, e.g. pv hvm hap gnttab-v1 gnttab-v2 */
  virtCaps: string[];
}

/** `xl info` output as key → value ("xen_version            : 4.17.7"). */
export function parseXlInfo(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^(\w+)\s*:\s?(.*)$/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!.trim();
  }
  return out;
}

export function hypervisorFromXlInfo(text: string): Hypervisor | undefined {
  const info = parseXlInfo(text);
  if (!info.xen_version) return undefined;
  return { version: info.xen_version, virtCaps: (info.virt_caps ?? '').split(/\s+/).filter(Boolean) };
}

/** Why a guest of `type` cannot live-migrate on a hypervisor with `caps`, or undefined when it can. */
export function liveMigrationProblem(type: 'pv' | 'pvh', caps: readonly string[]): string | undefined {
  if (type === 'pv' && !caps.includes('shadow')) return `a PV guest cannot live-migrate on this hypervisor: it has no shadow paging (virt_caps: ${caps.join(' ') || 'none'}), which PV log-dirty needs`;
  if (type === 'pvh' && !caps.includes('hap') && !caps.includes('shadow')) return `a PVH guest cannot run here: the hypervisor has neither hap nor shadow paging (virt_caps: ${caps.join(' ') || 'none'})`;
  return undefined;
}

/** The hypervisor of this machine, when it is a Dom0 (`xl info` answers); otherwise why not. */
export async function probeHypervisor(env: ExecEnv): Promise<{ hypervisor: Hypervisor } | { absent: string }> {
  if (!(await which('xl'))) return { absent: 'xl not found: this machine is not a Xen Dom0' };
  try {
    const r = await run(env, 'xl', ['info'], { timeoutMs: 15_000, quiet: true });
    const h = hypervisorFromXlInfo(r.stdout);
    return h ? { hypervisor: h } : { absent: '`xl info` printed no xen_version' };
  } catch (e) {
    return { absent: `\`xl info\` did not answer (${errorMessage(e).split('\n')[0]}): no hypervisor here` };
  }
}
