// A command's error on stderr (one line, a hint), and under --json a failed summary on stdout.
import { asDomuError, DomuError, errorMessage } from '../core/errors.js';
import type { Summary } from './summary.js';

/** Print `error` as the failure of `command`; returns the exit code. */
export function printError(error: unknown, json: boolean, command: string): number {
  const e = asDomuError(error);
  const known = e instanceof DomuError;
  const code = known ? e.exitCode : 1;
  const message = known ? e.message : `internal error: ${errorMessage(e)}`;
  const [first, ...rest] = message.split('\n');
  process.stderr.write(`domu ${command}: error: ${first}\n${rest.map((l) => `${l}\n`).join('')}`);
  if (known && e.hint) process.stderr.write(`  hint: ${e.hint}\n`);
  if (!known && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n(this is a bug in domu; please report it with the log)\n`);
  if (json) {
    const summary: Partial<Summary> = { ok: false, command, exitCode: code, error: { message, hint: known ? e.hint : undefined }, stages: [], warnings: [] };
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  }
  return code;
}

