// `domu lab`: the reference lab (../shared/reference-lab.md) emulated on this machine, from the build
// in --out and nothing else: every file the Dom0s use is one domu generated. Phases (stages):
//   storage       Debian's Xen, a dom0 kernel and ramdisk (as `domu verify`); the build published
//                 by the real publish code into the store's file system (LUN 1) and, with
//                 store.disk lun, onto the guest's LUN (LUN 2); the lab's ssh keys; tgtd on
//                 127.0.0.1 serving the generated storage/targets.conf (lab/storage-server.ts)
//   test1, test2  the first two hosts as nested Xen Dom0s, side by side, on a private segment
//   create        `xl create <store>/xen/test1/<guest>.cfg` on test1; the guest checked
//   migrate       lun: `xl migrate <guest> <test2's address>` on test1, over ssh; checked on test2
//   migrate back  lun: the same from test2 to test1
//   (file)        instead: the guest powered off on test1, the store handed to test2, the guest
//                 started there from test2's config and its file from test1 read back
//   disk          poweroff; QEMU and tgtd stopped; e2fsck -fn of the guest's disk as the storage
//                 server holds it, and the last file written read from it (debugfs)
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { StageContext } from '../../core/context.js';
import { errorMessage, InputError } from '../../core/errors.js';
import { fetchKernelPackage } from '../../kernel/kernel.js';
import { makeLabSshKeys } from '../../lab/ssh-keys.js';
import { labDom0Params, labHosts, startDom0Pair, type LabHostInfo } from '../../lab/dom0-pair.js';
import { checkLabDisk } from '../../lab/disk-check.js';
import { freePort } from '../../lab/tgtd.js';
import { startStorageServer, type StorageServer } from '../../lab/storage-server.js';
import { BUILD_RECORD, type BuildRecord } from '../../model/buildrecord.js';
import { LabGuest } from '../../stages/lab-guest.js';
import { GUEST_FILE, guestScriptFiles } from '../../stages/verify-xen-guest.js';
import { makeScratchStore, type ScratchStore } from '../../store/scratch-store.js';
import { dom0ParamFiles } from '../../xen/dom0-params.js';
import { GUEST_LUN } from '../../xen/lun.js';
import { prepareXenHost, type XenHost, type XenHostParts } from '../../xen/nested-xen.js';
import type { Plan, PlanFlags } from '../plan-types.js';
import type { PipelineStage } from '../run.js';
import { artifactPath, buildRecordFor } from './out-record.js';

export const DEFAULT_LAB_TIMEOUT_S = 300;

interface LabRun {
  parts?: XenHostParts;
  store?: ScratchStore;
  /** The guest's LUN backing file (store.disk lun). */
  guestLun?: string;
  storage?: StorageServer;
  starting?: [Promise<XenHost>, Promise<XenHost>];
  hosts: XenHost[];
  guest?: LabGuest;
  params?: ReturnType<typeof labDom0Params>[];
}

/** `domu lab`: the build in --out (its build.json names everything). */
export function planLabFromOut(flags: PlanFlags, timeoutS: number | undefined): Plan {
  const out = resolve(flags.outDir ?? 'out');
  return planLab(out, buildRecordFor(out), timeoutS ?? DEFAULT_LAB_TIMEOUT_S);
}

export function planLab(out: string, record: BuildRecord, timeoutS: number): Plan {
  const d = record.description;
  if (d.hosts.length < 2) throw new InputError(`the build in ${out} has ${d.hosts.length} host in its inventory: the lab needs two Dom0s`, 'add a second host to hosts: and build again');
  if (d.xen.toolstack === 'xm') throw new InputError('domu lab needs xen.toolstack: xl (xm is Xen 4.2, which Debian no longer ships)', 'build with xen.toolstack: xl');
  if (!record.guest) throw new InputError(`${join(out, BUILD_RECORD)} was written by an older domu: it does not say the guest's type and network`, `run \`domu build --out ${out}\` again`);
  const lun = d.store.disk === 'lun';
  if (lun && record.guest.type !== 'pvh') {
    throw new InputError('domu lab migrates the guest live, and a PV guest cannot live-migrate on Debian\'s Xen (built without shadow paging)', 'build with xen.type: pvh (the default with xl)');
  }
  if (!record.boot.kernel) throw new InputError(`the build in ${out} shipped no guest kernel (kernel.ship is off): the configs name a kernel only the real Dom0s have`, 'build with kernel.ship: true');
  artifactPath(out, record.image.path, 'the image');
  const hosts = labHosts(d);
  for (const f of [...hosts.map((h) => h.config), 'storage/targets.conf']) {
    if (!record.configs.includes(f)) throw new InputError(`the build in ${out} has no ${f}`, `run \`domu build --out ${out}\` again`);
    artifactPath(out, f, 'the generated file');
  }
  const bootFiles = [record.boot.kernel.path, ...(record.boot.ramdisk ? [record.boot.ramdisk.path] : [])];
  for (const f of bootFiles) artifactPath(out, f, 'the boot file');
  const net = record.guest.network;
  const address = net.mode === 'static' ? `${net.address}/${net.prefix}` : undefined;
  const params = ([0, 1] as const).map((i) => labDom0Params(d, hosts, i, { guestAddress: address?.split('/')[0] }));
  try {
    params.forEach((p) => dom0ParamFiles(p));
  } catch (e) {
    throw new InputError(`domu lab cannot pass this build to its Dom0s: ${errorMessage(e)}`, 'plainer names and paths in the description');
  }
  const run: LabRun = { hosts: [] };
  const dir = (ctx: StageContext) => join(ctx.workDir, 'lab');
  const guest = () => {
    if (!run.guest) throw new Error('lab: the test2 phase did not run');
    return run.guest;
  };
  const [h1, h2] = hosts;
  const configPath = (h: LabHostInfo) => `${h.storePath}/${h.config}`;
  const checksOf = (from: number) => guest().checks.slice(from);

  const stages: PipelineStage[] = [
    {
      name: 'storage',
      title: `Storage server: tgtd on 127.0.0.1 with storage/targets.conf (${lun ? 'LUN 1 the store, LUN 2 the guest disk' : 'LUN 1 the store'})`,
      run: async (ctx) => {
        await mkdir(dir(ctx), { recursive: true });
        const kernel = record.kernel?.package ? await fetchKernelPackage(ctx, { package: record.kernel.package }) : undefined;
        const parts = (run.parts = await prepareXenHost(ctx, kernel ? { kernel } : {}));
        ctx.progress('publishing the build into the store (and onto the guest LUN)');
        if (lun) {
          run.guestLun = join(dir(ctx), `guest-lun${GUEST_LUN}.img`);
          ctx.cleanup.tempPath(run.guestLun);
          const fh = await open(run.guestLun, 'w');
          await fh.truncate((await stat(join(out, record.image.path))).size);
          await fh.close();
        }
        const lunTarget = run.guestLun ? { device: run.guestLun, iqn: d.store.iqn, server: d.store.server, guest: d.guest.name } : undefined;
        run.store = await makeScratchStore({ outDir: out, files: [...bootFiles, ...record.configs], image: record.image.path, dir: dir(ctx), lun: lunTarget }, ctx);
        const keys = await makeLabSshKeys(ctx, parts.xen, dir(ctx), hosts);
        run.params = params.map((p, i) => ({ ...p, ssh: keys[i]!, scripts: guestScriptFiles() }));
        const conf = await readFile(join(out, 'storage/targets.conf'), 'utf8');
        const backingFiles = [{ path: run.store.image }, ...(run.guestLun ? [{ path: run.guestLun }] : [])];
        ctx.progress('starting tgtd on 127.0.0.1');
        run.storage = await startStorageServer({ dir: dir(ctx), targetsConf: conf, backingFiles }, ctx);
        for (const c of run.storage.changes) ctx.log.warn(`lab: ${c}`);
        const s = run.storage;
        return {
          cacheHit: false,
          note: `tgtd on ${s.portal}: ${s.iqn}, ${s.luns.map((l) => `LUN ${l.lun} ${Math.round(l.size / 1048576)} MiB`).join(', ')}; ${s.changes.length} lab change${s.changes.length === 1 ? '' : 's'} to targets.conf`,
          outputs: { portal: s.portal, iqn: s.iqn, luns: s.luns, changes: s.changes, targetsConf: s.targetsConfPath, xen: parts.xen.version, published: run.store.published.written, lun: run.store.published.lun },
        };
      },
    },
    {
      name: h1.name,
      title: `${h1.name}: Xen and dom0 in QEMU (${h1.bridge} ${h1.address}; ${h2.name} boots beside it)`,
      run: async (ctx) => {
        const s = run.storage!;
        run.starting = await startDom0Pair(ctx, {
          parts: run.parts!,
          params: [run.params![0]!, run.params![1]!],
          hosts,
          luns: s.luns.map((l) => ({ lun: l.lun, url: s.lunUrl(l.lun) })),
          port: await freePort(),
          dir: dir(ctx),
          readyTimeoutS: timeoutS,
        });
        run.starting[1].catch(() => undefined); // awaited by the next stage
        ctx.progress(`waiting for ${h1.name}'s dom0`);
        const a = await run.starting[0];
        run.hosts[0] = a;
        return { cacheHit: false, note: `dom0 ready ${a.secondsToReady.toFixed(1)} s after QEMU started`, outputs: { readySeconds: round(a.secondsToReady), console: a.qemu.spec.logFile } };
      },
    },
    {
      name: h2.name,
      title: `${h2.name}: Xen and dom0 in QEMU (${h2.bridge} ${h2.address}); the segment and ssh between them`,
      run: async (ctx) => {
        ctx.progress(`waiting for ${h2.name}'s dom0`);
        const b = await run.starting![1];
        run.hosts[1] = b;
        const labHostsNow = [{ name: h1.name, address: h1.address, host: run.hosts[0]! }, { name: h2.name, address: h2.address, host: b }] as const;
        const expect = { applets: record.busybox.applets, release: record.kernel?.release ?? null, modules: record.modules.map((m) => m.name), address, dom0Address: h1.address, rootDevice: d.guest.root.split(/\s+/)[0]! };
        run.guest = new LabGuest(labHostsNow, expect, timeoutS, ctx);
        await run.guest.checkSegment();
        return { cacheHit: false, note: `dom0 ready ${b.secondsToReady.toFixed(1)} s after QEMU started; ping and ssh ${h1.name} → ${h2.name} answer`, outputs: { readySeconds: round(b.secondsToReady), console: b.qemu.spec.logFile, checks: checksOf(0) } };
      },
    },
    {
      name: 'create',
      title: `xl create ${configPath(h1)} on ${h1.name}; check the guest`,
      run: async () => {
        const g = guest();
        const from = g.checks.length;
        const r = await g.createOn(0, configPath(h1));
        const f = await g.checkGuest();
        if (address !== undefined) await g.pingFrom(1, ` (guest on ${h1.name})`);
        return { cacheHit: false, note: `ready marker ${r.markerSeconds.toFixed(1)} s after xl create; ${f.addresses.join(', ') || 'no address'}`, outputs: { ...r, checks: checksOf(from) } };
      },
    },
    ...(lun ? [migrateStage('migrate', h1, h2), migrateStage('migrate back', h2, h1)] : [inTurnStage()]),
    {
      name: 'disk',
      title: "Power the guest off; check its disk as the storage server holds it",
      run: async (ctx) => {
        const g = guest();
        const from = g.checks.length;
        await g.powerOff();
        await g.releaseStore();
        await Promise.all(run.hosts.map((h) => h.stop()));
        await run.storage!.stop();
        const r = await checkLabDisk(ctx, lun ? { lun: run.guestLun! } : { store: run.store!.image, image: record.image.path, dir: dir(ctx) }, { path: GUEST_FILE, expect: g.lastWritten });
        await g.recordDisk(r.checks);
        await run.store!.dispose();
        if (run.guestLun) await rm(run.guestLun, { force: true });
        return { cacheHit: false, note: `${g.checks.length} checks passed`, outputs: { checks: checksOf(from), all: g.checks } };
      },
    },
  ];

  function migrateStage(name: string, from: LabHostInfo, to: LabHostInfo): PipelineStage {
    return {
      name,
      title: `xl migrate ${d.guest.name} ${to.address} on ${from.name} (over ssh); check the guest on ${to.name}`,
      run: async () => {
        const g = guest();
        const before = g.checks.length;
        const m = await g.migrate();
        return { cacheHit: false, note: `${m.from} → ${m.to} in ${m.seconds.toFixed(1)} s, pause ${m.pauseSeconds.toFixed(1)} s`, outputs: { ...m, checks: checksOf(before) } };
      },
    };
  }

  function inTurnStage(): PipelineStage {
    return {
      name: `${h2.name} in turn`,
      title: `store.disk file: the guest powered off on ${h1.name}, the store handed to ${h2.name}, xl create ${configPath(h2)} there`,
      run: async (ctx) => {
        const g = guest();
        const before = g.checks.length;
        ctx.log.warn(`lab: store.disk is file: the guest is not migrated (its image file on an ext4 store mounted read-write on two Dom0s would be corrupted); it boots on each host in turn. store.disk: lun migrates`);
        await g.powerOff();
        const u = await g.on0(0, ['umount "$DOMU_STORE" 2>&1 </dev/null']);
        if (u.status !== 0) throw await g.failure(`${h1.name} could not unmount the store: ${u.out.trim()}`);
        const m = await g.on0(1, ['mount -t ext4 -o rw "$DOMU_STORE_DEVICE" "$DOMU_STORE" 2>&1 </dev/null']);
        if (m.status !== 0) throw await g.failure(`${h2.name} could not mount the store: ${m.out.trim()}`);
        const r = await g.createOn(1, configPath(h2));
        await g.readFileWrittenBefore(`on ${h2.name}, written on ${h1.name}`);
        await g.writeAgain(`on ${h2.name}`);
        if (address !== undefined) await g.pingFrom(0, ` (guest on ${h2.name})`);
        return { cacheHit: false, note: `ready marker ${r.markerSeconds.toFixed(1)} s after xl create on ${h2.name}; the file from ${h1.name} read back`, outputs: { ...r, checks: checksOf(before), migration: 'not tried: store.disk is file' } };
      },
    };
  }

  return { command: 'lab', description: d, state: {}, lockOut: { dir: out, create: false }, stages };
}

const round = (s: number) => Math.round(s * 100) / 100;
