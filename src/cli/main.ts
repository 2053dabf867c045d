// The `domu` command line: the commands and their flags. A command's modules (the plan, the stages,
// the runner and their libraries) are imported when it runs, so `--version` and `--help` load only
// commander. User errors are one line (plus a hint) and exit 2 or 1; never a stack trace.
import { resolve } from 'node:path';
import { Command, Option } from 'commander';
import { EXIT_BAD_INPUT, InputError } from '../core/errors.js';
import { BUILD_STAGES } from '../pipeline/plan-types.js';
import { DOMU_VERSION } from '../core/version.js';
import type { CommonOpts, PlanFn } from './command.js';
import { printError } from './print-error.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

function withCommon(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'build description (default: ./guest.yaml when present)')
    .option('--out <dir>', 'output directory', 'out')
    .option('--json', 'print one JSON summary on stdout (progress goes to stderr)')
    .option('--verbose', 'show command lines and tool output')
    .option('--jobs <n>', 'parallel compile jobs (default: number of CPUs)')
    .option('--no-cache', 'ignore cached results and redo every stage')
    .option('--cache-dir <dir>', 'cache directory (default: $XDG_CACHE_HOME/domu or ~/.cache/domu)')
    .option('--set <key=value>', 'override a description key, e.g. --set image.size=2G (repeatable)', collect)
    .option('--busybox-version <version>', 'busybox release to build (busybox.version)')
    .addOption(new Option('--libc <libc>', 'C library (busybox.libc)').choices(['glibc', 'musl']))
    .option('--strict-version', 'never substitute another busybox version (fail instead)')
    .option('--source <path|url>', 'a busybox release tarball to use (tried before upstream)')
    .option('--sha256 <hash>', 'expected sha256 of the tarball (required for versions not in busybox-config/releases.hash)')
    .option('--pure-js', 'decompress with unbzip2-stream instead of a native bzip2 child')
    .addOption(new Option('--populate <how>', 'how files get into the image (image.populate)').choices(['auto', 'rootless', 'mount']))
    .option('--source-date-epoch <seconds>', 'timestamp for everything in the image (default: $SOURCE_DATE_EPOCH, else the busybox release date)')
    .option('--force-vermagic', 'copy modules built for another kernel release anyway (a warning each)')
    .option('--allow-inconsistent', 'hosts that disagree on kernel, ramdisk, disk or bridge are a warning, not an error');
}

function withPublish(cmd: Command): Command {
  return cmd
    .option('--publish', 'copy the result into the shared store (store.path) under a lock, atomically')
    .option('--store <dir>', 'publish into this directory instead of store.path (e.g. where this host mounts the store)')
    .option('--allow-unmounted', 'publish into a store directory that is not a mount point (local stores, tests)')
    .option('--force', 'overwrite generated files on the store that were edited by hand (keeping <file>.bak)')
    .option('--lock-timeout <seconds>', 'how long to wait for another publisher (default 600)');
}

/**
 * The action of a pipeline command. Its modules (the plan's builders, the stages, the runner and
 * their libraries) are imported only when it runs: `load` gives its plan function.
 */
function pipelineCommand(name: string, load: () => Promise<PlanFn>) {
  return async (...params: unknown[]) => {
    // commander passes the positional arguments first, then the options.
    const args = params.length > 2 ? (params[0] as string[]) : [];
    const o = params[params.length > 2 ? 1 : 0] as CommonOpts;
    const [{ runCommand }, plan] = await Promise.all([import('./command.js'), load()]);
    process.exitCode = await runCommand(name, plan, args, o);
  };
}

function seconds(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+(\.\d+)?$/.test(v) || Number(v) <= 0) throw new InputError(`${flag} ${v}: expected a positive number of seconds`);
  return Number(v);
}

const plans = () => import('../pipeline/plan.js');

export function program(): Command {
  const p = new Command('domu')
    .description('Build a static busybox Xen guest image and its per-host domain configs')
    .version(DOMU_VERSION, '-V, --version')
    .showHelpAfterError('(run `domu --help` for usage)')
    .exitOverride();
  withPublish(withCommon(p.command('build').description('run the whole pipeline into --out (npm run build:image)')))
    .option('--until <stage>', `stop after this stage (${BUILD_STAGES.join(', ')})`)
    .option('--lun-device <path>', "with store.disk lun: write the image onto this device instead of the LUN's /dev/disk/by-path name")
    .action(pipelineCommand('build', async () => (await plans()).planBuild));
  withCommon(p.command('fetch').description('source stage only: obtain and verify the busybox tarball; print its path and sha256')).action(pipelineCommand('fetch', async () => (await plans()).planFetch));
  p.command('doctor')
    .description('check the programs the pipeline needs and say what to install; on a Dom0, whether xen.type can live-migrate on its hypervisor')
    .option('--json', 'machine-readable report')
    .option('-c, --config <file>', 'build description whose xen.type is checked (default ./guest.yaml when present)')
    .action(async (o: { json?: boolean; config?: string }) => {
      const { doctor, formatDoctor, descriptionType } = await import('./doctor.js');
      const r = await doctor(descriptionType(o.config));
      process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatDoctor(r)}\n`);
      process.exitCode = r.ok ? 0 : 1;
    });
  withCommon(p.command('modules').description('module closure, load order and vermagic checks for a kernel, without building'))
    .argument('[names...]', 'module names or aliases (default: the modules: list of the build description)')
    .option('--kernel <image|dir|package>', 'the kernel: a bzImage, a /lib/modules/<release> directory, or a Debian package (default: kernel: of the description)')
    .action(pipelineCommand('modules', async () => (await plans()).planModules));
  withPublish(withCommon(p.command('configs').description("regenerate every host's Xen and host configs from the description; no image work (npm run configs)"))).action(
    pipelineCommand('configs', async () => (await plans()).planConfigs),
  );
  withCommon(p.command('verify').description("boot the build in --out from its own config under Debian's Xen nested in QEMU, check the guest (modules, network, disk) and migrate it"))
    .option('--quick', 'boot the image under plain QEMU instead (virtio, no Xen): ready marker, applets, modules')
    .option('--timeout <seconds>', 'how long each phase may take (default 120; --quick: until the ready marker)')
    .action(
      pipelineCommand('verify', async () => {
        const { planVerify } = await import('../pipeline/tasks/verify.js');
        return (d, f, _a, o) => planVerify(d, f, { timeoutS: seconds(o.timeout, '--timeout'), quick: o.quick === true });
      }),
    );
  withCommon(p.command('lab').description('rehearse the reference lab: tgtd on 127.0.0.1 serving the store, two nested Xen Dom0s (the first two hosts), the guest created on the first and live-migrated to the second and back (store.disk: lun)'))
    .option('--timeout <seconds>', 'how long each phase may take (default 300)')
    .action(
      pipelineCommand('lab', async () => {
        const { planLabFromOut } = await import('../pipeline/tasks/lab.js');
        return (_d, f, _a, o) => planLabFromOut(f, seconds(o.timeout, '--timeout'));
      }),
    );
  withCommon(p.command('release').description('versioned, reproducible artifacts of the build in --out: compressed image, boot files, configs, SHA256SUMS, manifest'))
    .option('--dist <dir>', 'where releases go (default dist/)')
    .action(
      pipelineCommand('release', async () => {
        const { planRelease } = await import('../pipeline/tasks/release.js');
        return (d, f, _a, o) => planRelease(d, f, { dist: o.dist === undefined ? undefined : resolve(o.dist) });
      }),
    );
  return p;
}

export async function main(argv: string[]): Promise<void> {
  // Past `ulimit -f` the kernel sends SIGXFSZ, whose default action kills domu with no cleanup.
  // Node ignores it at start, but the first child run through execa (signal-exit) puts the default
  // back. A listener keeps it handled: the write fails with EFBIG, reported in one line.
  process.on('SIGXFSZ', () => {});
  try {
    await program().parseAsync(argv);
  } catch (e) {
    // commander's own exits (help, version, bad flags) arrive here under exitOverride.
    const ce = e as { code?: string; exitCode?: number };
    if (typeof ce.code === 'string' && ce.code.startsWith('commander.')) {
      process.exitCode = ce.code === 'commander.helpDisplayed' || ce.code === 'commander.version' ? 0 : EXIT_BAD_INPUT;
      return;
    }
    process.exitCode = printError(e, false, 'domu');
  }
}

await main(process.argv);
