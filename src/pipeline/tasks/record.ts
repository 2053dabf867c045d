// The last step of a build: `out/build.json` (model/buildrecord.ts), written only when everything else
// succeeded. It also says whether the build changed anything at all ("up to date").
import { stat } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { programVersion } from '../../core/prereqs.js';
import { which } from '../../core/exec.js';
import { memoizedProbe } from '../../core/probememo.js';
import { DOMU_VERSION } from '../../core/version.js';
import { BUILD_RECORD_VERSION, buildHashOf, writeBuildRecord, type ArtifactRecord, type BuildRecord } from '../../model/buildrecord.js';
import type { PipelineStage } from '../run.js';
import { xenType, type Description } from '../../model/schema.js';
import { guestNetwork } from '../../model/network.js';
import { guestCmdline } from '../../xen/xencfg.js';
import { lunDevicePath } from '../../xen/lun.js';
import type { PlanFlags, PlanState } from '../plan-types.js';
import { fileIdentity, hashOf, type HashFn } from '../uptodate.js';

async function artifact(out: string, path: string, hash: HashFn): Promise<ArtifactRecord> {
  const st = await stat(path);
  return { path: relative(out, path), sha256: await hash(path), apparentBytes: st.size, allocatedBytes: st.blocks * 512 };
}

/** mke2fs's version, kept in the cache while the mke2fs binary is unchanged (core/probememo.ts). */
async function mke2fsVersion(cacheRoot: string, noCache: boolean): Promise<string | null> {
  if (noCache) return programVersion('mke2fs');
  // The binary PATH finds now is part of the key: an mke2fs put earlier on PATH is another program.
  const bin = await which('mke2fs');
  if (!bin) return programVersion('mke2fs');
  return memoizedProbe(cacheRoot, 'mke2fs-version', { path: process.env.PATH ?? null, bin }, async () => ({ value: await programVersion('mke2fs'), files: [bin] }));
}

export function recordTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const out = resolve(flags.outDir ?? 'out');
  return {
    name: 'record',
    title: 'Record the build (build.json)',
    run: async (ctx) => {
      const s = state.source!;
      const img = state.image!;
      const imagePath = join(out, desc.image.file);
      const ramdiskPath = state.boot?.ramdisk;
      const hash: HashFn = hashOf(ctx.cache, flags.noCache);
      const body: Omit<BuildRecord, 'buildHash' | 'imageFile' | 'ramdiskFile'> = {
        version: BUILD_RECORD_VERSION,
        domu: DOMU_VERSION,
        description: desc,
        busybox: {
          requestedVersion: s.requestedVersion,
          resolvedVersion: s.resolvedVersion,
          provider: s.provider,
          origin: s.origin,
          substitution: s.substitution ?? null,
          tarballSha256: s.sha256,
          configSha256: state.kconfig!.configSha256,
          applets: state.compile!.applets ?? null,
          compileKey: state.compile!.key,
        },
        kernel: state.kernel ? { release: state.kernel.release, origin: state.kernel.origin, package: state.kernel.package ?? null, version: state.kernel.version ?? null } : null,
        guest: {
          type: xenType(desc),
          pvh: state.kernel?.pvh ? { pvh: state.kernel.pvh.pvh ?? null, evidence: state.kernel.pvh.evidence } : null,
          cmdline: guestCmdline(desc.guest.root, desc.guest.extra),
          network: guestNetwork(desc),
        },
        modules: (state.modules?.modules ?? []).map((m) => ({ name: m.name, dest: m.dest, vermagic: m.release, verdict: m.verdict, size: m.size })),
        ramdiskModules: state.initramfs?.modules ?? [],
        sourceDateEpoch: state.sourceDateEpoch!,
        tools: {
          domu: DOMU_VERSION,
          node: process.version,
          cc: state.kconfig!.toolchain.ccVersion,
          mke2fs: (await mke2fsVersion(ctx.cache.root, flags.noCache ?? false)) ?? 'unknown',
        },
        image: { path: relative(out, imagePath), sha256: img.sha256, apparentBytes: img.apparentBytes, allocatedBytes: img.allocatedBytes, uuid: img.uuid, populate: img.populate, reproducible: img.reproducible, inodesUsed: img.inodesUsed, files: img.files },
        boot: {
          kernel: state.boot?.kernel ? await artifact(out, state.boot.kernel, hash) : null,
          ramdisk: ramdiskPath ? await artifact(out, ramdiskPath, hash) : null,
        },
        initramfs: state.initramfs && ramdiskPath ? { ...state.initramfs, path: relative(out, ramdiskPath) } : null,
        configs: state.configs?.files ?? [],
        disk: { store: desc.store.disk, target: desc.store.disk === 'lun' ? lunDevicePath(desc) : `${desc.store.path}/${desc.image.file}` },
        imageKey: state.imageKey!,
        ramdiskKey: state.ramdiskKey ?? null,
      };
      const record: BuildRecord = {
        ...body,
        imageFile: (await fileIdentity(imagePath))!,
        ramdiskFile: ramdiskPath ? ((await fileIdentity(ramdiskPath)) ?? null) : null,
        buildHash: buildHashOf(body),
      };
      const unchanged =
        !!state.imageUpToDate && (state.ramdiskUpToDate ?? !state.initramfs) && (state.configs?.written ?? 0) === 0 && state.previous?.buildHash === record.buildHash;
      if (!unchanged) await writeBuildRecord(out, record);
      state.record = record;
      state.upToDate = unchanged;
      const note = unchanged ? `up to date: nothing in ${out} was rewritten` : `build ${record.buildHash.slice(0, 12)} recorded in ${join(out, 'build.json')}`;
      ctx.log.info(note);
      return { cacheHit: unchanged, note, outputs: { buildHash: record.buildHash, upToDate: unchanged, path: join(out, 'build.json') } };
    },
  };
}
