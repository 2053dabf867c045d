// `domu verify` (without --quick): the build in --out on Debian's real Xen, nested in QEMU
// (stages/verify-xen.ts has the checks). Its phases are stages of their own, so that the progress
// display says what is being waited for and the JSON summary has each phase's time and checks:
//   xen      Debian's Xen packages and a dom0 kernel (apt-get download into the cache), the dom0
//            ramdisk (cached by key), the scratch store (the real publish code, then mke2fs -d)
//   dom0     QEMU with Xen; dom0 up with the first host's name, bridge and address, store mounted
//   guest    `xl create <store.path>/xen/<host>/<guest>.cfg` as published; the ready marker
//   checks   applets, root device, modules loaded, eth0's address, pings both ways, a file written
//   move     PVH: live migration (same host); PV: save and restore; the same guest afterwards
//   disk     poweroff; the file read back from the guest's image in dom0
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import type { StageContext } from '../../core/context.js';
import { errorMessage, InputError } from '../../core/errors.js';
import { BUILD_RECORD, type BuildRecord } from '../../model/buildrecord.js';
import { makeScratchStore, type ScratchStore } from '../../store/scratch-store.js';
import { XenVerification } from '../../stages/verify-xen.js';
import { fetchKernelPackage } from '../../kernel/kernel.js';
import { guestScriptFiles } from '../../stages/verify-xen-guest.js';
import { liveMigrationProblem } from '../../xen/hypervisor.js';
import { dom0ParamFiles } from '../../xen/dom0-params.js';
import { netmaskPrefix } from '../../model/network.js';
import { prepareXenHost, XenHost, type XenHostParts } from '../../xen/nested-xen.js';
import type { Plan } from '../plan-types.js';
import type { PipelineStage } from '../run.js';
import { artifactPath } from './out-record.js';

interface XenRun {
  parts?: XenHostParts;
  store?: ScratchStore;
  host?: XenHost;
  check?: XenVerification;
  /** The nested hypervisor's virt_caps (xl info). */
  virtCaps: string[];
}

export function planVerifyXen(out: string, record: BuildRecord, timeoutS: number): Plan {
  const d = record.description;
  const host = d.hosts[0];
  if (!host) throw new InputError(`the build in ${out} has no hosts in its description`, 'add a host to hosts: and build again');
  if (d.xen.toolstack === 'xm') throw new InputError('domu verify on Xen needs xen.toolstack: xl (xm is Xen 4.2, which Debian no longer ships)', 'use `domu verify --quick`, or build with xen.toolstack: xl');
  artifactPath(out, record.image.path, 'the image');
  if (!record.boot.kernel) throw new InputError(`the build in ${out} shipped no guest kernel (kernel.ship is off): the config names a kernel only the Dom0s have`, 'build with kernel.ship: true, or use `domu verify --quick`');
  const config = `xen/${host.name}/${d.guest.name}.cfg`;
  if (!record.configs.includes(config)) throw new InputError(`the build in ${out} has no ${config}`, `run \`domu build --out ${out}\` again`);
  artifactPath(out, config, 'the domain config');
  const bootFiles = [record.boot.kernel.path, ...(record.boot.ramdisk ? [record.boot.ramdisk.path] : [])];
  for (const f of bootFiles) artifactPath(out, f, 'the boot file');
  if (!record.guest) throw new InputError(`${join(out, BUILD_RECORD)} was written by an older domu: it does not say the guest's type and network`, `run \`domu build --out ${out}\` again`);
  const type = record.guest.type;
  const net = record.guest.network;
  const address = net.mode === 'static' ? `${net.address}/${net.prefix}` : undefined;
  const storePath = host.store_path ?? d.store.path;
  // dom0 gets these as data files, each checked against a narrow character set (a store path
  // with a space, say, cannot be a dom0 parameter): refused here, before anything runs.
  const params = {
    hostname: host.name,
    bridge: { name: host.bridge, address: host.address, prefix: netmaskPrefix(d.network.netmask) },
    store: { device: '/dev/vda', path: storePath },
    guestName: d.guest.name,
    guestAddress: address?.split('/')[0],
    guestConfig: config,
    guestImage: d.image.file,
  };
  try {
    dom0ParamFiles(params);
  } catch (e) {
    throw new InputError(`domu verify on Xen cannot pass this build to its dom0: ${errorMessage(e)}`, 'use `domu verify --quick`, or plainer names and paths in the description');
  }
  const run: XenRun = { virtCaps: [] };
  const dir = (ctx: StageContext) => join(ctx.workDir, 'verify-xen');
  const verification = () => {
    if (!run.check) throw new Error('verify-xen: the dom0 phase did not run');
    return run.check;
  };

  const stages: PipelineStage[] = [
    {
      name: 'xen',
      title: "Fetch Debian's Xen and a dom0 kernel, make the dom0 ramdisk and the scratch store",
      run: async (ctx) => {
        await mkdir(dir(ctx), { recursive: true });
        const t = performance.now();
        // The dom0 kernel: the guest's own Debian package when it is one (cached already).
        const kernel = record.kernel?.package ? await fetchKernelPackage(ctx, { package: record.kernel.package }) : undefined;
        const parts = (run.parts = await prepareXenHost(ctx, kernel ? { kernel } : {}));
        const prepareS = (performance.now() - t) / 1000;
        ctx.progress('publishing the build into the scratch store');
        run.store = await makeScratchStore({ outDir: out, files: [...bootFiles, ...record.configs], image: record.image.path, dir: dir(ctx) }, ctx);
        return {
          cacheHit: parts.initramfs.hit,
          note: `Xen ${parts.xen.version}, dom0 kernel ${parts.kernel.release}, dom0 ramdisk ${parts.initramfs.hit ? 'from the cache' : 'made'} in ${parts.initramfs.seconds.toFixed(2)} s; store ${storePath} with ${run.store.published.written.length} files`,
          outputs: {
            xen: { package: parts.xen.package, version: parts.xen.version },
            dom0Kernel: { package: parts.kernel.package, version: parts.kernel.version, release: parts.kernel.release },
            dom0Initramfs: { path: parts.initramfs.path, hit: parts.initramfs.hit, seconds: parts.initramfs.seconds, size: parts.initramfs.size },
            prepareSeconds: Math.round(prepareS * 100) / 100,
            store: run.store.image,
            published: run.store.published.written,
          },
        };
      },
    },
    {
      name: 'dom0',
      title: `Boot Xen in QEMU; dom0 as ${host.name} (${host.bridge} ${host.address})`,
      run: async (ctx) => {
        run.host = await XenHost.start(ctx, { ...run.parts!, params: { ...params, scripts: guestScriptFiles() }, storeImage: run.store!.image, readyTimeoutS: timeoutS, dir: dir(ctx) });
        run.check = new XenVerification(run.host, { applets: record.busybox.applets, release: record.kernel?.release ?? null, modules: record.modules.map((m) => m.name), address, dom0Address: host.address, rootDevice: d.guest.root.split(/\s+/)[0]! }, timeoutS, ctx);
        const info = await run.check.xlInfo();
        run.virtCaps = (info.virt_caps ?? '').split(/\s+/).filter(Boolean);
        return {
          cacheHit: false,
          note: `dom0 ready ${run.host.secondsToReady.toFixed(1)} s after QEMU started; Xen ${info.xen_version ?? '?'} (${info.virt_caps ?? '?'})`,
          outputs: { readySeconds: Math.round(run.host.secondsToReady * 100) / 100, xenVersion: info.xen_version, virtCaps: info.virt_caps, console: run.check.consoleLog },
        };
      },
    },
    {
      name: 'guest',
      title: `xl create ${storePath}/${config}`,
      run: async (ctx) => {
        const r = await verification().create(`${storePath}/${config}`);
        return { cacheHit: false, note: `ready marker ${r.markerSeconds.toFixed(1)} s after xl create`, outputs: { ...r, checks: verification().checks.slice() } };
      },
    },
    {
      name: 'checks',
      title: 'Check the guest: applets, root, modules, network, disk',
      run: async (ctx) => {
        const v = verification();
        const before = v.checks.length;
        const f = await v.checkGuest();
        // dhcp: nothing on the emulated bridge answers DHCP, so there is no address to check.
        const skipped = net.mode === 'static' ? [] : [`address and pings: guest.network is ${net.mode}${net.mode === 'dhcp' ? ' (no DHCP server on the bridge inside the emulated machine)' : ''}`];
        for (const s of skipped) ctx.log.warn(`not checked: ${s}`);
        return { cacheHit: false, note: `${f.applets} applets; ${f.modules.map((m) => `${m.name} loaded`).join(', ') || 'no modules'}; ${f.addresses.join(', ') || 'no address'}`, outputs: { checks: v.checks.slice(before), skipped } };
      },
    },
    {
      name: 'move',
      title: type === 'pvh' ? 'Live-migrate the guest (xl migrate, same host)' : 'Move the PV guest: live when the hypervisor has shadow paging, else save and restore',
      run: async (ctx) => {
        const v = verification();
        const before = v.checks.length;
        const problem = liveMigrationProblem(type, run.virtCaps);
        if (problem) ctx.log.warn(`live migration not tried: ${problem}; xl save and xl restore instead`);
        const m = await v.move(!problem);
        const why = problem ? `; live migration not tried: ${problem}` : '';
        return { cacheHit: false, note: `${m.kind} in ${m.seconds.toFixed(1)} s, pause ${m.pauseSeconds.toFixed(1)} s${why}`, outputs: { ...m, liveMigration: problem ?? 'possible', checks: v.checks.slice(before) } };
      },
    },
    {
      name: 'disk',
      title: "Power the guest off and read its file from the image in dom0",
      run: async (ctx) => {
        const v = verification();
        const before = v.checks.length;
        await v.checkDisk();
        await run.host!.stop();
        await run.store!.dispose();
        return { cacheHit: false, note: `${v.checks.length} checks passed`, outputs: { checks: v.checks.slice(before), all: v.checks } };
      },
    },
  ];
  return { command: 'verify', description: d, state: {}, lockOut: { dir: out, create: false }, stages };
}
