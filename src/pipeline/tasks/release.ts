// `domu release`: versioned, reproducible release artifacts of the build in --out (issue 7).
// Two stages (src/stages/release.ts): check the build in --out against its build.json, then
// write dist/<guest>-<busybox version>-<build hash>/ through a temporary directory.
import { count } from '../../core/plural.js';
import { resolve } from 'node:path';
import { DOMU_VERSION } from '../../core/version.js';
import { hashValue } from '../../core/hash.js';
import { writeRelease } from '../../stages/release.js';
import { checkBuild, type CheckedBuild } from '../../stages/release-check.js';
import type { Plan, PlanFlags } from '../plan-types.js';
import type { PipelineStage } from '../run.js';
import type { Description } from '../../model/schema.js';

export interface ReleaseFlags {
  /** Where releases go (default dist/). */
  dist?: string | undefined;
}

export function planRelease(description: Description, flags: PlanFlags, release: ReleaseFlags): Plan {
  const out = resolve(flags.outDir ?? 'out');
  const dist = resolve(release.dist ?? 'dist');
  let build: CheckedBuild | undefined;
  const check: PipelineStage = {
    name: 'check',
    title: `Check the build in ${out} against its build.json`,
    run: async (ctx) => {
      build = await checkBuild({ outDir: out }, ctx);
      const r = build.record;
      // The release is of the build as recorded; a description file that says otherwise was not built yet.
      if (flags.baseDir !== undefined && hashValue(description) !== hashValue(r.description)) {
        ctx.log.warn(`the build description differs from the one ${out} was built with: releasing the build as recorded (run \`domu build\` first to release the new description)`);
      }
      const boot = [build.kernel, build.ramdisk].filter((f) => f !== null).map((f) => f.path);
      return {
        cacheHit: false,
        note: `build ${r.buildHash.slice(0, 12)}: image, ${count(boot.length, 'boot file')}, ${count(build.configs.length, 'config')} unchanged`,
        outputs: { outDir: out, buildHash: r.buildHash, image: r.image.path, imageSha256: r.image.sha256, boot, configs: build.configs.map((c) => c.path) },
      };
    },
  };
  const write: PipelineStage = {
    name: 'release',
    title: `Write the release into ${dist}`,
    run: async (ctx) => {
      const r = await writeRelease({ build: build!, distDir: dist, domuVersion: DOMU_VERSION }, ctx);
      const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
      const note = `${r.name}${r.status === 'created' ? '' : ' (already there, identical)'}: image ${mib(r.image.bytes)} ${r.image.compression}, ${r.files.length} files`;
      return { cacheHit: r.status === 'already there', note, outputs: { ...r } };
    },
  };
  return { command: 'release', description, state: {}, stages: [check, write], lockOut: { dir: out, create: false } };
}
