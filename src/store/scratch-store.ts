// A store of its own for a nested Dom0 (`domu verify` and `domu lab` on real Xen): the build in --out published
// by the real publish code into a scratch directory, then made into an ext4 image (rootless
// `mke2fs -d`, which copies sparse files as sparse) that QEMU attaches as a disk and dom0 mounts
// at store.path. The guest then starts from exactly the files, at exactly the relative paths, the
// shared store gets, through the same checks. --out is only read. With `lun` (store.disk: lun, the
// lab) the publish writes the image onto that LUN's backing file instead (publish-lun.ts), and the
// store holds only the boot files and configs.
import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { StageContext } from '../core/context.js';
import { run } from '../core/exec.js';
import { publish, type LunTarget, type PublishOutput } from './publish.js';

export interface ScratchStoreInput {
  /** The build (--out). */
  outDir: string;
  /** Files to publish, relative to outDir (boot files, configs). */
  files: string[];
  /** The guest image, relative to outDir. */
  image: string;
  /** store.disk lun: the image goes onto this LUN (a file the caller made, as big as the image). */
  lun?: LunTarget | undefined;
  /** Where the scratch directory and the image go (the run's work directory). */
  dir: string;
}

export interface ScratchStore {
  /** The ext4 image of the store. */
  image: string;
  /** Its apparent size in bytes. */
  size: number;
  /** What the publish wrote. */
  published: PublishOutput;
  /** Remove the image (also done by the cleanup registry when the run fails or is stopped). */
  dispose(): Promise<void>;
}

const MiB = 1 << 20;
/** Room for the file system's own metadata and the journal, beyond the files' apparent sizes. */
const SLACK = 96 * MiB;

export async function makeScratchStore(input: ScratchStoreInput, ctx: StageContext): Promise<ScratchStore> {
  const tree = join(input.dir, 'store');
  const image = join(input.dir, 'store.img');
  await rm(tree, { recursive: true, force: true });
  await mkdir(tree, { recursive: true });
  const releaseTree = ctx.cleanup.tempPath(tree);
  try {
    const published = await publish(
      {
        outDir: input.outDir,
        store: tree,
        files: input.files,
        ...(input.lun ? { lun: { image: input.image, target: input.lun } } : { image: input.image }),
        allowUnmounted: true,
        lockTimeoutMs: 10_000,
        command: 'domu (scratch store)',
      },
      ctx,
    );
    let apparent = 0;
    for (const rel of [...(input.lun ? [] : [input.image]), ...input.files]) apparent += (await stat(join(tree, rel))).size;
    // Apparent sizes: the image is sparse in the scratch tree and stays sparse in store.img.
    const size = Math.ceil((apparent * 1.1 + SLACK) / MiB) * MiB;
    await rm(image, { force: true });
    const releaseImage = ctx.cleanup.tempPath(image);
    await run(ctx, 'mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'domu-store', '-E', 'root_owner=0:0', '-d', tree, image, `${size / 1024}k`], {
      timeoutMs: 600_000,
      missingHint: 'install e2fsprogs',
    });
    ctx.log.info(`scratch store ${image}: ${published.written.length} files published by the publish code, ${Math.round(size / MiB)} MiB apparent`);
    const dispose = async () => {
      await rm(image, { force: true });
      releaseImage();
    };
    return { image, size, published, dispose };
  } finally {
    await rm(tree, { recursive: true, force: true });
    releaseTree();
  }
}
