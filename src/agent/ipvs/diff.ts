// IPVS state as `ipvsadm-save -n` prints it, and the `ipvsadm -R` commands that
// turn the kernel's state into the plan. Pure. Only virtual servers recorded as ours
// are ever edited or deleted; one that exists but is not ours is reported, not taken.
import type { L4 } from '../model.ts';
import { serviceKey, type VirtualServer } from './plan.ts';

/** A virtual server as the kernel holds it (nothing to say about draining). */
export type KernelVirtualServer = Omit<VirtualServer, 'draining'>;

const FLAG_PROTOCOL: Record<string, L4> = { '-t': 'tcp', '--tcp-service': 'tcp', '-u': 'udp', '--udp-service': 'udp', '--sctp-service': 'sctp' };

function splitHostPort(text: string): { address: string; port: number } | undefined {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(text);
  return m ? { address: m[1]!, port: Number(m[2]) } : undefined;
}

/** Virtual servers (not fwmark ones) from `ipvsadm-save -n`, by key. */
export function parseIpvsSave(text: string): Map<string, KernelVirtualServer> {
  const out = new Map<string, KernelVirtualServer>();
  for (const line of text.split('\n')) {
    const words = line.trim().split(/\s+/);
    const [cmd, flag, target] = words;
    const protocol = FLAG_PROTOCOL[flag ?? ''];
    const hp = splitHostPort(target ?? '');
    if (!protocol || !hp) continue;
    const key = serviceKey(protocol, hp.address, hp.port);
    const value = (f: string): string | undefined => {
      const i = words.indexOf(f);
      return i === -1 ? undefined : words[i + 1];
    };
    if (cmd === '-A') {
      const p = value('-p');
      out.set(key, { protocol, ...hp, scheduler: value('-s') ?? 'wlc', ...(p ? { persistence: Number(p) } : {}), reals: [] });
    } else if (cmd === '-a') {
      const real = splitHostPort(value('-r') ?? '');
      if (real) out.get(key)?.reals.push({ ...real, weight: Number(value('-w') ?? 1) });
    }
  }
  return out;
}

export interface IpvsDiff {
  /** `ipvsadm -R` input, in order. */
  commands: string[];
  /** Keys of virtual servers created / deleted (the owned set follows). */
  created: string[];
  deleted: string[];
  /** Wanted virtual servers that exist but are not ours: left alone. */
  conflicts: string[];
  /** Wanted keys that were compared (not skipped as unchanged), conflicts excepted. */
  compared: string[];
}

const realKey = (r: { address: string; port: number }): string => `${r.address.includes(':') ? `[${r.address}]` : r.address}:${r.port}`;
const plainKey = (r: { address: string; port: number }): string => `${r.address}:${r.port}`;

function serviceArgs(vs: { scheduler: string; persistence?: number }): string {
  return `-s ${vs.scheduler}${vs.persistence ? ` -p ${vs.persistence}` : ''}`;
}

/**
 * Commands from `current` (the kernel, or what we last wrote) to `wanted`. `owned` is
 * the set of keys we created. Real servers that left the plan are deleted at once —
 * unless their endpoint is terminating, which only drains (weight 0).
 */
export function diffIpvs(current: Map<string, KernelVirtualServer>, wanted: Map<string, VirtualServer>, owned: Set<string>, unchanged?: (key: string, vs: VirtualServer) => boolean): IpvsDiff {
  const d: IpvsDiff = { commands: [], created: [], deleted: [], conflicts: [], compared: [] };
  for (const [key, vs] of wanted) {
    if (unchanged?.(key, vs)) continue;
    const cur = current.get(key);
    if (cur && !owned.has(key)) {
      d.conflicts.push(key);
      continue;
    }
    d.compared.push(key);
    if (!cur) {
      d.created.push(key);
      d.commands.push(`-A ${key} ${serviceArgs(vs)}`);
      for (const r of vs.reals) d.commands.push(`-a ${key} -r ${realKey(r)} -m -w ${r.weight}`);
      continue;
    }
    if (cur.scheduler !== vs.scheduler || (cur.persistence ?? 0) !== (vs.persistence ?? 0)) d.commands.push(`-E ${key} ${serviceArgs(vs)}`);
    const have = new Map(cur.reals.map((r) => [plainKey(r), r]));
    const want = new Set<string>();
    for (const r of vs.reals) {
      const k = plainKey(r);
      want.add(k);
      const h = have.get(k);
      if (!h) d.commands.push(`-a ${key} -r ${realKey(r)} -m -w ${r.weight}`);
      else if (h.weight !== r.weight) d.commands.push(`-e ${key} -r ${realKey(r)} -m -w ${r.weight}`);
    }
    const draining = new Set(vs.draining);
    for (const [k, h] of have) {
      if (want.has(k)) continue;
      if (!draining.has(k)) d.commands.push(`-d ${key} -r ${realKey(h)}`);
      else if (h.weight !== 0) d.commands.push(`-e ${key} -r ${realKey(h)} -m -w 0`);
    }
  }
  for (const key of owned) {
    if (wanted.has(key)) continue;
    if (current.has(key)) d.commands.push(`-D ${key}`);
    d.deleted.push(key);
  }
  return d;
}

/** The kernel state after `diff` was applied successfully (for diffing the next partial sync); updates `current` in place. */
export function afterApply(current: Map<string, KernelVirtualServer>, wanted: Map<string, VirtualServer>, diff: IpvsDiff): Map<string, KernelVirtualServer> {
  for (const key of diff.deleted) current.delete(key);
  for (const key of diff.compared) {
    const vs = wanted.get(key)!;
    const draining = new Set(vs.draining);
    const kept = (current.get(key)?.reals ?? []).filter((r) => draining.has(plainKey(r)) && !vs.reals.some((w) => plainKey(w) === plainKey(r))).map((r) => ({ ...r, weight: 0 }));
    current.set(key, { protocol: vs.protocol, address: vs.address, port: vs.port, scheduler: vs.scheduler, ...(vs.persistence ? { persistence: vs.persistence } : {}), reals: [...vs.reals, ...kept] });
  }
  return current;
}
