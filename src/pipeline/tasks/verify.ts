// `domu verify`: boot the build in --out under QEMU and check the guest (issue 7).
import { DomuError } from '../../lib/errors.js';
import type { Plan, PlanFlags } from '../plan-types.js';
import type { Description } from '../schema.js';

export interface VerifyFlags {
  /** Seconds to wait for the ready marker (default 120). */
  timeoutS?: number | undefined;
}

export function planVerify(_description: Description, _flags: PlanFlags, _verify: VerifyFlags): Plan {
  throw new DomuError('`domu verify` is not available yet (issue 7)');
}
