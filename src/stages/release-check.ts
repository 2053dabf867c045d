// The first of `domu release`'s two stages (release.ts): out/build.json is read and its build hash
// recomputed (an edited record is refused), and every artifact it names is compared with it: the
// image (size and sha256, holes not read), the kernel and the ramdisk (sha256), every generated
// config (its domu-content-sha256 header). A build in --out that changed after `domu build`
// recorded it is never released.
import { readFile, stat } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { sha256Sparse } from '../fs/sparse.js';
import { DomuError } from '../core/errors.js';
import { checkHeader } from '../store/genheader.js';
import { sha256File } from '../core/hash.js';
import { BUILD_RECORD, buildHashOf, readBuildRecord, type ArtifactRecord, type BuildRecord } from '../model/buildrecord.js';
import type { StageContext } from '../core/context.js';

export interface CheckedFile {
  /** Relative to --out (as in build.json). */
  path: string;
  sha256: string;
  bytes: number;
}

export interface CheckedBuild {
  outDir: string;
  record: BuildRecord;
  /** The raw image's absolute path. */
  image: string;
  kernel: CheckedFile | null;
  ramdisk: CheckedFile | null;
  /** The generated configs as read and checked (their bytes go into the tarball as they are). */
  configs: { path: string; data: Buffer }[];
}

export function rebuildHint(outDir: string): string {
  return `run \`domu build --out ${outDir}\` (same description) to rebuild it, then \`domu release\` again`;
}

export function changedSinceBuild(outDir: string, rel: string, what: string): DomuError {
  return new DomuError(`${join(outDir, rel)} ${what}: the build in ${outDir} changed after \`domu build\` recorded it in ${BUILD_RECORD}; refusing to release it`, {
    hint: rebuildHint(outDir),
  });
}

/** A path from build.json, which must stay inside --out. */
function insideOut(outDir: string, rel: string): string {
  if (!rel || posix.isAbsolute(rel) || posix.normalize(rel) !== rel || rel.split('/').includes('..')) {
    throw new DomuError(`${join(outDir, BUILD_RECORD)} names ${JSON.stringify(rel)}, which is not a path inside ${outDir}`, { hint: rebuildHint(outDir) });
  }
  return join(outDir, rel);
}

async function checkArtifact(outDir: string, a: ArtifactRecord | null): Promise<CheckedFile | null> {
  if (!a) return null;
  const path = insideOut(outDir, a.path);
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) throw changedSinceBuild(outDir, a.path, 'is missing');
  const hash = await sha256File(path);
  if (st.size !== a.apparentBytes || hash !== a.sha256) throw changedSinceBuild(outDir, a.path, `has sha256 ${hash}, build.json records ${a.sha256}`);
  return { path: a.path, sha256: a.sha256, bytes: a.apparentBytes };
}

/** The build in `outDir` as build.json records it, after checking every artifact against it. */
export async function checkBuild(input: { outDir: string }, ctx: StageContext): Promise<CheckedBuild> {
  const { outDir } = input;
  const recordPath = join(outDir, BUILD_RECORD);
  const present = await stat(recordPath).then((s) => s.isFile(), () => false);
  if (!present) {
    throw new DomuError(`no build to release in ${outDir}: ${BUILD_RECORD} is missing (it is written when \`domu build\` succeeds)`, {
      hint: `run \`domu build --out ${outDir}\` first (or give --out the directory of an earlier build)`,
    });
  }
  const record = await readBuildRecord(outDir);
  if (!record) {
    throw new DomuError(`${recordPath} is not a build record this domu can read (unparsable or another record version)`, { hint: rebuildHint(outDir) });
  }
  const { buildHash, imageFile: _imageFile, ramdiskFile: _ramdiskFile, ...body } = record;
  if (buildHashOf(body) !== buildHash) {
    throw new DomuError(`${recordPath} was edited after the build (or written by a domu that hashed records differently): its content no longer matches its build hash ${buildHash.slice(0, 12)}`, { hint: rebuildHint(outDir) });
  }

  // The small files first: a changed config fails before the image is read.
  const configs: CheckedBuild['configs'] = [];
  for (const rel of record.configs) {
    const data = await readFile(insideOut(outDir, rel)).catch(() => undefined);
    if (!data) throw changedSinceBuild(outDir, rel, 'is missing');
    const h = checkHeader(data.toString('utf8'));
    if (!h.generated) throw changedSinceBuild(outDir, rel, 'is no longer a generated file (its domu header is gone)');
    if (!h.intact) throw changedSinceBuild(outDir, rel, 'was edited (its content no longer matches its domu-content-sha256 header)');
    configs.push({ path: rel, data });
  }
  const kernel = await checkArtifact(outDir, record.boot.kernel);
  const ramdisk = await checkArtifact(outDir, record.boot.ramdisk);

  const image = insideOut(outDir, record.image.path);
  const st = await stat(image).catch(() => undefined);
  if (!st?.isFile()) throw changedSinceBuild(outDir, record.image.path, 'is missing');
  if (st.size !== record.image.apparentBytes) throw changedSinceBuild(outDir, record.image.path, `is ${st.size} bytes, build.json records ${record.image.apparentBytes}`);
  ctx.progress(`hashing ${record.image.path}`);
  const hash = await sha256Sparse(ctx, image);
  if (hash !== record.image.sha256) throw changedSinceBuild(outDir, record.image.path, `has sha256 ${hash}, build.json records ${record.image.sha256}`);
  ctx.log.info(`build ${buildHash.slice(0, 12)} in ${outDir}: image, ${[kernel && 'kernel', ramdisk && 'ramdisk'].filter(Boolean).join(', ') || 'no boot files'} and ${configs.length} configs match ${BUILD_RECORD}`);
  return { outDir, record, image, kernel, ramdisk, configs };
}

