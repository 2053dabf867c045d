// What `domu verify` (both kinds) reads from --out: its build record and the artifacts it names,
// checked at plan time so that a missing or unreadable build is bad input (exit 2).
import { readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { errorMessage, InputError } from '../../core/errors.js';
import { BUILD_RECORD, BUILD_RECORD_VERSION, type BuildRecord } from '../../model/buildrecord.js';

/** The build record of `out`, or an InputError that says what to do. */
export function buildRecordFor(out: string): BuildRecord {
  const file = join(out, BUILD_RECORD);
  const again = `run \`domu build --out ${out}\` first`;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new InputError(`${file} not found: ${out} holds no complete build`, again);
  }
  let r: BuildRecord;
  try {
    r = JSON.parse(text) as BuildRecord;
  } catch (e) {
    throw new InputError(`${file} is not valid JSON (${errorMessage(e)})`, again);
  }
  if (r.version !== BUILD_RECORD_VERSION) throw new InputError(`${file} is a version ${String(r.version)} build record; this domu reads version ${BUILD_RECORD_VERSION}`, again);
  return r;
}

/** An artifact named by the record, which must still be a file in `out`. */
export function artifactPath(out: string, rel: string, what: string): string {
  const p = resolve(out, rel);
  let ok = false;
  try {
    ok = statSync(p).isFile();
  } catch {
    ok = false;
  }
  if (!ok) throw new InputError(`${what} ${p} (named in ${join(out, BUILD_RECORD)}) is missing`, `run \`domu build --out ${out}\` again`);
  return p;
}
