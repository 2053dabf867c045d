// The lab's ssh keys. `xl migrate <guest> <host>` (MIGRATION.md's command, unchanged) runs
// `ssh <host> xl migrate-receive`, so the two dom0s need what a real pair of Dom0s has: an ssh
// server with a host key on each, and root's key on the source authorized on the target, its
// host key known (no prompt, no `-y`). dropbear (from the Debian packages of the nested Xen host)
// makes them: `dropbearkey` run through the packages' own dynamic loader and libraries, so
// nothing of this machine's is needed. Made fresh for every lab run, in its scratch directory.
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { StageContext } from '../core/context.js';
import { DomuError } from '../core/errors.js';
import { run } from '../core/exec.js';
import type { Dom0Ssh } from '../xen/dom0-params.js';
import type { XenPackages } from '../xen/xen-packages.js';

const LIB_DIRS = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu'];

/** `dropbearkey <args>` from the unpacked packages; its stdout. */
async function dropbearkey(ctx: StageContext, xen: XenPackages, args: string[]): Promise<string> {
  const root = xen.root;
  const loader = join(root, 'lib/x86_64-linux-gnu/ld-linux-x86-64.so.2');
  const program = join(root, 'usr/bin/dropbearkey');
  const libraryPath = LIB_DIRS.map((d) => join(root, d)).join(':');
  const r = await run(ctx, loader, ['--library-path', libraryPath, program, ...args], { quiet: true });
  return r.stdout;
}

/** A new ed25519 key: the private key file (dropbear format) and its public line. */
async function newKey(ctx: StageContext, xen: XenPackages, file: string): Promise<{ key: Buffer; publicLine: string }> {
  // The key goes to the dom0s as data; its file is only dropbearkey's way of handing it over.
  const release = ctx.cleanup.tempPath(file);
  try {
    await dropbearkey(ctx, xen, ['-t', 'ed25519', '-f', file]);
    const out = await dropbearkey(ctx, xen, ['-y', '-f', file]);
    const publicLine = out.split('\n').find((l) => l.startsWith('ssh-ed25519 '));
    if (!publicLine) throw new DomuError(`dropbearkey -y -f ${file} printed no ssh-ed25519 public key`);
    return { key: await readFile(file), publicLine: publicLine.trim() };
  } finally {
    await rm(file, { force: true });
    release();
  }
}

/**
 * Keys for dom0s at `addresses` (in this order): each its own host key, one root key for all,
 * authorized everywhere, every host key known by address.
 */
export async function makeLabSshKeys(ctx: StageContext, xen: XenPackages, dir: string, hosts: readonly { name: string; address: string }[]): Promise<Dom0Ssh[]> {
  const client = await newKey(ctx, xen, join(dir, 'id_dropbear'));
  const hostKeys: { key: Buffer; publicLine: string }[] = [];
  for (const h of hosts) hostKeys.push(await newKey(ctx, xen, join(dir, `host-${h.name}.key`)));
  // known_hosts: "<address> <type> <base64>" (the comment of the public line dropped).
  const knownHosts = hosts.map((h, i) => `${h.address} ${hostKeys[i]!.publicLine.split(' ').slice(0, 2).join(' ')}\n`).join('');
  ctx.log.info(`lab: ssh keys made (a root key and ${hosts.length} host keys, ed25519; passed to the dom0s as data, no copy kept)`);
  return hosts.map((_, i) => ({ hostKey: hostKeys[i]!.key, clientKey: client.key, authorizedKeys: `${client.publicLine}\n`, knownHosts }));
}
