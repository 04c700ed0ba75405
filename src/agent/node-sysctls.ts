// Kernel settings the agent needs on its node. In the DaemonSet the agent's own
// /proc/sys is read-only (it runs with NET_ADMIN only), so a privileged init container
// running `extbackend agent --init-only` sets them first, as kube-proxy's --init-only
// does. route_localnet is deliberately never set.
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';

/** Nodes forward: NodePorts, and outside hosts' replies on their way back to pods. */
export const FORWARDING_SYSCTLS: Readonly<Record<string, string>> = {
  'net.ipv4.ip_forward': '1',
  'net.ipv6.conf.all.forwarding': '1',
};

// What kube-proxy's IPVS mode sets too: NAT for IPVS connections (for masquerade),
// and connections to a removed real server end instead of hanging.
export const IPVS_SYSCTLS: Readonly<Record<string, string>> = {
  'net.ipv4.vs.conntrack': '1',
  'net.ipv4.vs.expire_nodest_conn': '1',
  'net.ipv4.vs.expire_quiescent_template': '1',
};

export const sysctlFile = (name: string): string => `/proc/sys/${name.replaceAll('.', '/')}`;

/** True when the ip_vs module is loaded on this node. */
export const ipvsLoaded = (): boolean => existsSync(sysctlFile('net.ipv4.vs'));

/** The settings `--init-only` makes: forwarding always, IPVS's when ip_vs is loaded. */
export function initSysctls(withIpvs: boolean): Record<string, string> {
  return { ...FORWARDING_SYSCTLS, ...(withIpvs ? IPVS_SYSCTLS : {}) };
}

/** Sets what differs; returns the names it changed. Throws, naming the setting, when one cannot be set. */
export async function setSysctls(wanted: Record<string, string>): Promise<string[]> {
  const changed: string[] = [];
  for (const [name, value] of Object.entries(wanted)) {
    const file = sysctlFile(name);
    if ((await readFile(file, 'utf8')).trim() === value) continue;
    await writeFile(file, value).catch((err: Error) => {
      throw new Error(`cannot set ${name}=${value} (${err.message}); run \`extbackend agent --init-only\` as root with a writable /proc/sys (the DaemonSet's privileged init container)`);
    });
    changed.push(name);
  }
  return changed;
}
