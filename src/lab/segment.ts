// The lab's Ethernet segment: one TCP connection between the two dom0s' QEMU processes on
// 127.0.0.1 (nested-xen.ts, `-netdev stream`). The listening QEMU must be up before the other
// connects (QEMU 7.2's stream client does not retry), and probing the port by connecting would
// take the one connection the listener accepts, so readiness is read from /proc/net/tcp.
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { DomuError } from '../core/errors.js';

const LISTEN = '0A';
const ESTABLISHED = '01';

/** Sockets of 127.0.0.1:`port` (IPv4, local end) in /proc/net/tcp, with their states (hex). */
function statesOn(procNetTcp: string, port: number): string[] {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return procNetTcp
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter((f) => f[1] === local)
    .map((f) => f[3] ?? '');
}

/** Whether something listens on 127.0.0.1:`port`. */
export function listensOn(procNetTcp: string, port: number): boolean {
  return statesOn(procNetTcp, port).includes(LISTEN);
}

/**
 * Whether a process holds 127.0.0.1:`port`: listening, or a connection accepted on it (QEMU's
 * stream server stops listening once the other end is connected). TIME_WAIT belongs to no process.
 */
export function portHeld(procNetTcp: string, port: number): boolean {
  return statesOn(procNetTcp, port).some((s) => s === LISTEN || s === ESTABLISHED);
}

/** Wait until 127.0.0.1:`port` listens, or `isAlive()` says the listener died, or `timeoutMs` passes. */
export async function waitForListener(port: number, timeoutMs: number, isAlive: () => boolean, signal: AbortSignal): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (listensOn(await readFile('/proc/net/tcp', 'utf8'), port)) return;
    if (!isAlive()) throw new DomuError(`the first dom0's QEMU exited before it listened on 127.0.0.1:${port} for the lab's segment`);
    if (performance.now() > deadline) throw new DomuError(`nothing listens on 127.0.0.1:${port} for the lab's segment ${timeoutMs / 1000} s after QEMU started`);
    await sleep(50, undefined, { signal });
  }
}
