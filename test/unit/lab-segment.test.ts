// The lab segment's port checks read /proc/net/tcp: lines as the kernel writes them.
import { describe, expect, it } from 'vitest';
import { listensOn, portHeld } from '../../src/lab/segment.js';

const HEAD = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode';
// 127.0.0.1:34577 = 0100007F:8711; 127.0.0.1:45685 = 0100007F:B275.
const line = (sl: number, local: string, remote: string, st: string) => `  ${sl}: ${local} ${remote} ${st} 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0`;

describe('the segment port in /proc/net/tcp', () => {
  it('listening: both say so', () => {
    const t = [HEAD, line(0, '0100007F:8711', '00000000:0000', '0A')].join('\n');
    expect(listensOn(t, 34577)).toBe(true);
    expect(portHeld(t, 34577)).toBe(true);
    expect(listensOn(t, 34578)).toBe(false);
  });
  it('connected (QEMU stopped listening after the accept): held, not listening', () => {
    const t = [HEAD, line(0, '0100007F:8711', '0100007F:C350', '01'), line(1, '0100007F:C350', '0100007F:8711', '01')].join('\n');
    expect(listensOn(t, 34577)).toBe(false);
    expect(portHeld(t, 34577)).toBe(true);
  });
  it('TIME_WAIT after both ends died, or another address: not held', () => {
    expect(portHeld([HEAD, line(0, '0100007F:8711', '0100007F:C350', '06')].join('\n'), 34577)).toBe(false);
    expect(portHeld([HEAD, line(0, '0200007F:8711', '00000000:0000', '0A')].join('\n'), 34577)).toBe(false);
  });
});
