// The compile stage: `make -jN` in a private build directory, then `make install` into a
// staging tree that becomes a cache entry. The binary must be static (our ELF reader) and run.
import { createWriteStream } from 'node:fs';
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { copyTree } from '../fs/buildtree.js';
import { DomuError } from '../core/errors.js';
import { ExecError, run } from '../core/exec.js';
import { readElfFile, machineName } from '../kernel/elf.js';
import { hashValue } from '../core/hash.js';
import type { Toolchain } from '../busybox/toolchain.js';
import type { StageContext } from '../core/context.js';
import { verifiedTree } from './extract.js';

/** Bump when what this stage produces for the same inputs changes. */
export const COMPILE_STAGE_VERSION = 1;
export const INSTALLS_KIND = 'installs';

export interface CompileInput {
  /** The extracted busybox source tree (read-only). */
  tree: string;
  version: string;
  tarballSha256: string;
  /** The final .config text from the kconfig stage. */
  config: string;
  /** A build directory the kconfig stage already prepared with this .config, if any. */
  buildDir?: string | undefined;
  toolchain: Toolchain;
  /** make variables (NAME=value) for every make call, e.g. CC=musl-gcc. */
  makeVars: string[];
  /** The content hash of every file force-included through CONFIG_EXTRA_CFLAGS. */
  includedFilesHash: string;
  jobs?: number | undefined;
  noCache?: boolean;
}

export interface CompileOutput {
  /** The installed tree (bin/, sbin/, usr/, linuxrc), in the cache; read-only. */
  installTree: string;
  binary: string;
  applets: number | undefined;
  bytes: number;
  static: true;
  machine: string;
  cacheHit: boolean;
  key: string;
  /** The full build log (kept with the cache entry). */
  log: string;
  objects: number;
}

export function compileKey(input: CompileInput): string {
  return hashValue({
    stage: COMPILE_STAGE_VERSION,
    tarball: input.tarballSha256,
    config: input.config,
    cc: input.toolchain.ccVersion,
    libc: input.toolchain.libc,
    cross: input.toolchain.crossCompile ?? null,
    make: input.makeVars,
    included: input.includedFilesHash,
  });
}

interface Meta {
  applets: number | undefined;
  bytes: number;
  machine: string;
  objects: number;
}

export async function compileStage(input: CompileInput, ctx: StageContext): Promise<CompileOutput> {
  const key = compileKey(input);
  const result = (entry: string, meta: Meta, cacheHit: boolean): CompileOutput => ({
    installTree: join(entry, 'root'),
    binary: join(entry, 'root', 'bin', 'busybox'),
    applets: meta.applets,
    bytes: meta.bytes,
    static: true,
    machine: meta.machine,
    cacheHit,
    key,
    log: join(entry, 'build.log'),
    objects: meta.objects,
  });

  if (!input.noCache) {
    // Hashed in full on every lookup: ~2.4 MB and ~400 symlinks, ~10 ms.
    let meta: Meta | undefined;
    const hit = await ctx.cache.lookup(INSTALLS_KIND, key, {
      log: ctx.log,
      check: async (d) => {
        meta = await readFile(join(d, 'meta.json'), 'utf8').then((t) => JSON.parse(t) as Meta, () => undefined);
        return meta && typeof meta.bytes === 'number' && typeof meta.machine === 'string' ? undefined : 'meta.json unreadable';
      },
    });
    if (hit && meta) {
      ctx.log.info(`busybox ${input.version} install tree from the cache (${meta.applets ?? '?'} applets); make not run`);
      // The kconfig stage may have prepared a build directory (its own cache missed): not needed.
      if (input.buildDir) await rm(input.buildDir, { recursive: true, force: true });
      return result(hit, meta, true);
    }
  }

  // A private build directory in the run's work directory: kept when the build fails (the log
  // and the objects are there to inspect), removed when it succeeds.
  const buildDir = input.buildDir ?? join(ctx.workDir, `busybox-${input.version}`);
  if (!input.buildDir) {
    await copyTree(ctx, await verifiedTree(ctx, input.tree), buildDir);
    await writeFile(join(buildDir, '.config'), input.config);
  }
  const logPath = join(buildDir, 'build.log');
  let meta: Meta | undefined;
  const entry = await ctx.cache.store(
    INSTALLS_KIND,
    key,
    async (tmp) => {
      const objects = await make(input, ctx, buildDir, logPath);
      const root = join(tmp, 'root');
      await mkdir(root);
      // KBUILD_NOCMDDEP=1 only now: with make >= 4.3, busybox < 1.32 would otherwise rebuild
      // everything on `make install`; on the first build the flag breaks the link (facts.md).
      await run(ctx, 'make', [...input.makeVars, 'KBUILD_NOCMDDEP=1', `CONFIG_PREFIX=${root}`, 'install'], { cwd: buildDir, quiet: true });
      const binary = join(root, 'bin', 'busybox');
      const elf = await readElfFile(binary);
      if (!elf.isStatic()) {
        const why = [elf.interpreter() && `interpreter ${elf.interpreter()}`, elf.needed().length && `needs ${elf.needed().join(', ')}`].filter(Boolean).join('; ');
        throw new DomuError(`busybox is dynamically linked (${why}): CONFIG_STATIC did not take effect`, { hint: 'check CONFIG_STATIC=y in the fragment or .config' });
      }
      if (elf.machine !== input.toolchain.machine) {
        throw new DomuError(`busybox was built for ${elf.machineName}, expected ${machineName(input.toolchain.machine)}`, { hint: 'check busybox.cross_compile and the compiler it names' });
      }
      meta = { applets: await countApplets(input, ctx, binary), bytes: (await stat(binary)).size, machine: elf.machineName, objects };
      await copyFile(logPath, join(tmp, 'build.log'));
      await writeFile(join(tmp, 'config'), input.config);
      await writeFile(join(tmp, 'meta.json'), JSON.stringify(meta, null, 2));
    },
    (tmp) => ctx.cleanup.tempPath(tmp),
    { log: ctx.log, redo: 'replacing it' },
  );
  await rm(buildDir, { recursive: true, force: true });
  const final = meta ?? (JSON.parse(await readFile(join(entry, 'meta.json'), 'utf8')) as Meta);
  ctx.log.info(`busybox ${input.version}: static ${final.machine} binary, ${(final.bytes / 1048576).toFixed(1)} MiB, ${final.applets ?? 'unknown'} applets`);
  return result(entry, final, false);
}

/** `make -jN`; returns the number of objects compiled. On failure: the first error lines and the log path. */
async function make(input: CompileInput, ctx: StageContext, buildDir: string, logPath: string): Promise<number> {
  const jobs = input.jobs ?? availableParallelism();
  const log = createWriteStream(logPath);
  let objects = 0;
  const errors: string[] = [];
  ctx.log.info(`make -j${jobs} (busybox ${input.version}, ${input.toolchain.libc}${input.toolchain.crossCompile ? `, ${input.toolchain.crossCompile}` : ''})`);
  try {
    await run(ctx, 'make', [...input.makeVars, `-j${jobs}`], {
      cwd: buildDir,
      quiet: true,
      buffer: false,
      onLine: (line) => {
        log.write(`${line}\n`);
        if (/^\s+CC\s/.test(line)) {
          objects += 1;
          if (objects % 10 === 0) ctx.progress(`${objects} objects compiled`);
        }
        if (errors.length < 6 && /\berror\b|undefined reference|No rule to make target/i.test(line)) errors.push(line.trim());
      },
      missingHint: 'apt-get install make',
    });
  } catch (e) {
    if (e instanceof ExecError) {
      const first = errors.length ? errors : [e.message];
      throw new DomuError(`busybox ${input.version} failed to compile: ${first[0]}${first.length > 1 ? `\n  ${first.slice(1).join('\n  ')}` : ''}`, {
        hint: `full log: ${logPath}`,
      });
    }
    throw e;
  } finally {
    await new Promise<void>((res) => log.end(res));
  }
  ctx.log.info(`${objects} objects compiled`);
  return objects;
}

/** `busybox --list` for a native build; a cross-built binary cannot run here. */
async function countApplets(input: CompileInput, ctx: StageContext, binary: string): Promise<number | undefined> {
  if (input.toolchain.crossCompile) return undefined;
  const r = await run(ctx, binary, ['--list'], { quiet: true });
  const applets = r.stdout.split('\n').filter(Boolean).length;
  if (applets === 0) throw new DomuError(`${binary} --list printed no applets`);
  return applets;
}
