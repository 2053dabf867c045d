// The closure's graph logic on small synthetic module sets (the real package is in
// test/integration/modules-real.test.ts): cycles, softdep loops, post softdeps, built-in
// aliases, unresolvable softdeps, and kmod's alias matching (fnmatch, - and _ alike).
import { describe, expect, it } from 'vitest';
import { moduleClosure, transitiveDepends } from '../../src/kernel/closure.js';
import { DomuError } from '../../src/core/errors.js';
import { aliasMatches, type ModuleIndex } from '../../src/kernel/modindex.js';
import { moduleInfoFromSection, type ModuleInfo } from '../../src/kernel/modinfo.js';

type Spec = { depends?: string; softdep?: string; alias?: string[] };

/** An index of fake modules under /m, and a readInfo that builds their .modinfo. */
function fixture(mods: Record<string, Spec>, extra: Partial<ModuleIndex> = {}) {
  const index: ModuleIndex = {
    dir: '/m',
    source: 'scan',
    paths: new Map(Object.keys(mods).map((n) => [n, `kernel/${n}.ko`])),
    aliases: Object.entries(mods).flatMap(([n, s]) => (s.alias ?? []).map((a) => [a, n] as [string, string])),
    builtin: new Set(),
    builtinAliases: [],
    ...extra,
  };
  const readInfo = async (file: string): Promise<ModuleInfo> => {
    const name = file.replace(/^\/m\/kernel\/|\.ko$/g, '');
    const s = mods[name]!;
    const entries = [`name=${name}`, `depends=${s.depends ?? ''}`, 'vermagic=6.1.0-1-amd64 SMP ', ...(s.softdep ? [`softdep=${s.softdep}`] : [])];
    return moduleInfoFromSection(file, Buffer.from(`${entries.join('\0')}\0`));
  };
  return { index, run: (names: string[]) => moduleClosure(index, names, { readInfo }) };
}

const names = (c: { modules: { name: string }[] }) => c.modules.map((m) => m.name);

describe('moduleClosure', () => {
  it('orders depends before dependents, pre softdeps before, post softdeps after', async () => {
    const f = fixture({ top: { depends: 'a,b', softdep: 'pre: p post: q' }, a: { depends: 'b' }, b: {}, p: {}, q: {} });
    expect(names(await f.run(['top']))).toEqual(['p', 'b', 'a', 'top', 'q']);
  });

  it('a dependency cycle is an error naming the cycle', async () => {
    const f = fixture({ a: { depends: 'b' }, b: { depends: 'c' }, c: { depends: 'a' } });
    const e: unknown = await f.run(['a']).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DomuError);
    expect((e as Error).message).toBe('module dependency cycle: a → b → c → a');
  });

  it('a softdep loop is reported as a warning and broken', async () => {
    const f = fixture({ a: { softdep: 'pre: b' }, b: { softdep: 'pre: a' } });
    const c = await f.run(['a']);
    expect(names(c)).toEqual(['b', 'a']);
    expect(c.warnings).toEqual(['soft dependency loop a → b → a ignored']);
  });

  it('a softdep that resolves to nothing is a warning; one that is built in is noted', async () => {
    const f = fixture({ a: { softdep: 'pre: crypto-nothing crypto-builtin' } }, { builtinAliases: [['crypto-builtin', 'bi']] });
    const c = await f.run(['a']);
    expect(names(c)).toEqual(['a']);
    expect(c.warnings).toEqual(['soft dependency a → crypto-nothing (softdep) resolves to no module; going on without it']);
    expect(c.builtin).toEqual([{ name: 'bi', via: ['a', 'crypto-builtin (softdep)'] }]);
  });

  it('an alias naming several modules loads all of them; a depends on a built-in module is skipped', async () => {
    const f = fixture({ x: { alias: ['crypto-x'] }, y: { alias: ['crypto-x'] }, z: { depends: 'k', softdep: 'pre: crypto-x' } }, { builtin: new Set(['k']) });
    const c = await f.run(['z']);
    expect(names(c)).toEqual(['x', 'y', 'z']);
    expect(c.builtin.map((b) => b.name)).toEqual(['k']);
  });

  it('modules.dep lists: transitive, last-loaded first', async () => {
    const f = fixture({ top: { depends: 'a' }, a: { depends: 'b' }, b: {} });
    const deps = transitiveDepends(await f.run(['top']));
    expect(deps.get('top')!.map((m) => m.name)).toEqual(['a', 'b']);
    expect(deps.get('b')).toEqual([]);
  });
});

describe('aliasMatches (kmod: fnmatch, - and _ alike outside brackets)', () => {
  it.each([
    ['xennet', 'xennet', true],
    ['crypto-crc32c', 'crypto_crc32c', true],
    ['xen:vif', 'xen:vif', true],
    ['pci:v00001AF4d00001001sv*sd*bc*sc*i*', 'pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00', true],
    ['pci:v00001AF4d00001001sv*sd*bc*sc*i*', 'pci:v00001AF4d00001002sv0sd0bc0sc0i0', false],
    ['usb:v*p*d*dc*dsc*dp*ic0[1-3]isc*ip*in*', 'usb:v1p2d3dc0dsc0dp0ic02isc0ip0in0', true],
    ['usb:v*p*d*dc*dsc*dp*ic0[1-3]isc*ip*in*', 'usb:v1p2d3dc0dsc0dp0ic04isc0ip0in0', false],
    ['fs-ext?', 'fs-ext4', true],
  ])('%s ~ %s: %s', (pattern, name, want) => {
    expect(aliasMatches(pattern, name)).toBe(want);
  });
});
