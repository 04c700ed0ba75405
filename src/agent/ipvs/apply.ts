// Applies an IPVS plan for one family: ipset entries, dummy-interface addresses, one
// `ipvsadm -R` batch of virtual/real server changes (never `ipvsadm-restore`: that
// script clears every virtual server first, other people's included), and the few iptables rules
// (through the iptables applier). Diff-based and idempotent: a full sync re-reads the
// kernel, a partial one diffs against what we last wrote. Additions happen before
// the virtual servers that need them, removals after, and a virtual server is recorded
// as ours (owned set) before it is created, so a crash never leaves one we forget.
import { runTool } from '../../net/system-command.ts';
import { IptablesApplier } from '../iptables/apply.ts';
import { IPVS_SYSCTLS, ipvsLoaded, setSysctls } from '../node-sysctls.ts';
import type { L4, ProxyModel } from '../model.ts';
import { afterApply, diffIpvs, parseIpvsSave, type KernelVirtualServer } from './diff.ts';
import { DUMMY_INTERFACE, IpvsPlanner, ipsetNames, serviceKey, type IpvsPlan, type Scheduler, type VirtualServer } from './plan.ts';

const exec = runTool;
// What `ipvsadm-save -n` runs; that wrapper is a bash script, and the image has no shell.
const SAVE_ARGS = ['-S', '-n'];

/** Makes the kernel ready for IPVS mode; one call serves both families. */
export async function prepareIpvsNode(): Promise<void> {
  if (!ipvsLoaded()) throw new Error('IPVS is not available in this kernel: load the ip_vs module (modprobe ip_vs) or use --proxy-mode iptables|nftables');
  await setSysctls(IPVS_SYSCTLS);
  const links = await exec('ip', ['-o', 'link', 'show', 'dev', DUMMY_INTERFACE]).catch(() => '');
  if (!links.includes(DUMMY_INTERFACE)) await exec('ip', ['link', 'add', DUMMY_INTERFACE, 'type', 'dummy']);
}

/** Local addresses NodePorts answer on: global-scope ones, not ours, inside --nodeport-addresses when given. */
export async function nodeAddresses(inCidrs: (ip: string) => boolean): Promise<string[]> {
  const list = JSON.parse(await exec('ip', ['-j', 'addr', 'show'])) as { ifname: string; addr_info?: { local: string; scope: string }[] }[];
  return list
    .filter((l) => l.ifname !== DUMMY_INTERFACE && l.ifname !== 'lo')
    .flatMap((l) => (l.addr_info ?? []).filter((a) => a.scope === 'global').map((a) => a.local))
    .filter(inCidrs);
}

const memberToKey = (member: string): string | undefined => {
  const m = /^(.+),(tcp|udp|sctp):(\d+)$/.exec(member);
  return m ? serviceKey(m[2] as L4, m[1]!, Number(m[3])) : undefined;
};

export interface IpvsApplyResult {
  /** Virtual servers created, changed or deleted. */
  written: number;
  virtualServers: number;
  realServers: number;
  conflicts: string[];
}

export class IpvsApplier {
  private readonly family: 4 | 6;
  private readonly sets: ReturnType<typeof ipsetNames>;
  private readonly iptables: IptablesApplier;
  private readonly planner = new IpvsPlanner();
  private loaded = false;
  private known = new Map<string, KernelVirtualServer>();
  private knownSets = new Map<string, Set<string>>();
  private knownVips = new Set<string>();
  /** The plan objects last applied, per key: the same object means nothing changed. */
  private applied = new Map<string, VirtualServer>();

  constructor(family: 4 | 6) {
    this.family = family;
    this.sets = ipsetNames(family);
    this.iptables = new IptablesApplier(family);
  }

  private async load(): Promise<void> {
    const setType = (name: string): string => (name === this.sets.vips ? 'hash:ip' : 'hash:ip,port');
    const create = Object.values(this.sets).map((n) => `create ${n} ${setType(n)} family ${this.family === 4 ? 'inet' : 'inet6'} -exist`).join('\n');
    await exec('ipset', ['restore'], `${create}\n`);
    this.knownSets.clear();
    for (const name of Object.values(this.sets)) {
      const saved = await exec('ipset', ['list', name, '-o', 'save']);
      this.knownSets.set(name, new Set([...saved.matchAll(new RegExp(`^add ${name} (\\S+)`, 'gm'))].map((m) => m[1]!)));
    }
    const all = parseIpvsSave(await exec('ipvsadm', SAVE_ARGS));
    this.known = new Map([...all].filter(([, vs]) => vs.address.includes(':') === (this.family === 6)));
    const addrs = await exec('ip', ['-o', `-${this.family}`, 'addr', 'show', 'dev', DUMMY_INTERFACE]);
    this.knownVips = new Set([...addrs.matchAll(/inet6? (\S+?)\/\d+/g)].map((m) => m[1]!));
    this.applied.clear();
    this.loaded = true;
  }

  async apply(model: ProxyModel, full: boolean, options: { scheduler: Scheduler; nodeAddresses: string[] }): Promise<IpvsApplyResult> {
    if (full || !this.loaded) await this.load();
    const plan = this.planner.plan(model, this.family, options);
    try {
      return await this.write(plan, full);
    } catch (err) {
      this.loaded = false; // unknown state now: the next (full) sync re-reads the kernel
      throw err;
    }
  }

  private async write(plan: IpvsPlan, full: boolean): Promise<IpvsApplyResult> {
    const owned = new Set([...(this.knownSets.get(this.sets.owned) ?? [])].map(memberToKey).filter((k) => k !== undefined));
    const diff = diffIpvs(this.known, plan.services, owned, (key, vs) => this.applied.get(key) === vs);
    const conflicts = new Set(diff.conflicts);
    // Set entries: additions before the servers exist, removals after they are gone.
    const adds: string[] = [];
    const dels: string[] = [];
    // A conflicting (foreign) virtual server is neither recorded as ours nor marked by our rules.
    const sets = new Map(Object.entries(plan.sets).map(([name, members]) => [name, conflicts.size ? new Set([...members].filter((m) => !conflicts.has(memberToKey(m) ?? ''))) : members]));
    for (const [name, wanted] of sets) {
      const have = this.knownSets.get(name) ?? new Set();
      for (const m of wanted) if (!have.has(m)) adds.push(`add ${name} ${m}`);
      for (const m of have) if (!wanted.has(m)) dels.push(`del ${name} ${m}`);
    }
    const prefix = this.family === 4 ? 32 : 128;
    // nodad: an IPv6 service address is usable at once, not "tentative" during duplicate detection.
    const vipAdds = [...plan.vips].filter((v) => !this.knownVips.has(v)).map((v) => `address add ${v}/${prefix} dev ${DUMMY_INTERFACE}${this.family === 6 ? ' nodad' : ''}`);
    const vipDels = [...this.knownVips].filter((v) => !plan.vips.has(v)).map((v) => `address del ${v}/${prefix} dev ${DUMMY_INTERFACE}`);

    if (adds.length) await exec('ipset', ['restore', '-exist'], `${adds.join('\n')}\n`);
    if (vipAdds.length) await exec('ip', ['-batch', '-'], `${vipAdds.join('\n')}\n`);
    if (diff.commands.length) await exec('ipvsadm', ['-R'], `${diff.commands.join('\n')}\n`);
    if (dels.length) await exec('ipset', ['restore', '-exist'], `${dels.join('\n')}\n`);
    if (vipDels.length) await exec('ip', ['-batch', '-'], `${vipDels.join('\n')}\n`);
    await this.iptables.apply(plan.chains, full);

    afterApply(this.known, plan.services, diff);
    for (const key of diff.deleted) this.applied.delete(key);
    for (const key of diff.compared) this.applied.set(key, plan.services.get(key)!);
    this.knownSets = new Map([...sets].map(([n, members]) => [n, new Set(members)]));
    this.knownVips = new Set(plan.vips);
    // "-a -t 10.96.0.10:80 -r ..." -> "-t 10.96.0.10:80": virtual servers touched.
    const touched = new Set(diff.commands.map((c) => c.split(' ').slice(1, 3).join(' ')));
    let realServers = 0;
    for (const vs of plan.services.values()) realServers += vs.reals.length;
    return { written: touched.size, virtualServers: plan.services.size - conflicts.size, realServers, conflicts: diff.conflicts };
  }

  /** Deletes our virtual servers and sets for this family (`--cleanup`; iptables rules go first). */
  async cleanup(): Promise<number> {
    if (!ipvsLoaded()) return 0;
    const saved = await exec('ipset', ['list', this.sets.owned, '-o', 'save']).catch(() => '');
    const current = parseIpvsSave(await exec('ipvsadm', SAVE_ARGS));
    const ours = [...saved.matchAll(new RegExp(`^add ${this.sets.owned} (\\S+)`, 'gm'))].map((m) => memberToKey(m[1]!)).filter((k) => k !== undefined && current.has(k));
    if (ours.length) await exec('ipvsadm', ['-R'], `${ours.map((k) => `-D ${k}`).join('\n')}\n`);
    for (const name of Object.values(this.sets)) await exec('ipset', ['destroy', name]).catch(() => undefined);
    return ours.length;
  }
}

/** Removes our dummy interface (after both families' cleanup). */
export async function removeDummyInterface(): Promise<boolean> {
  const links = await exec('ip', ['-o', 'link', 'show', 'dev', DUMMY_INTERFACE]).catch(() => '');
  if (!links.includes(DUMMY_INTERFACE)) return false;
  await exec('ip', ['link', 'del', DUMMY_INTERFACE]);
  return true;
}
