// Temp names: what atomic writes call the files and directories they rename into place later
// (`.tmp-<name>-<pid>-<random>`, atomic.ts), and what sweeps and the journal's recovery remove.
// A module of its own so that the journal (which atomic writes report to) can know them too.

export const TEMP_MARK = '.tmp-';

export function isTempName(name: string): boolean {
  return name.startsWith(TEMP_MARK);
}
