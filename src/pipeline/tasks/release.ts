// `domu release`: versioned, reproducible release artifacts of the build in --out (issue 7).
import { DomuError } from '../../lib/errors.js';
import type { Plan, PlanFlags } from '../plan-types.js';
import type { Description } from '../schema.js';

export interface ReleaseFlags {
  /** Where releases go (default dist/). */
  dist?: string | undefined;
}

export function planRelease(_description: Description, _flags: PlanFlags, _release: ReleaseFlags): Plan {
  throw new DomuError('`domu release` is not available yet (issue 7)');
}
