// `extbackend agent`: flags to AgentOptions; --cleanup removes everything and exits.
import { cleanupAgent, startAgent, type ProxyMode } from '../agent/agent.ts';
import { SCHEDULERS, type Scheduler } from '../agent/ipvs/plan.ts';
import { initSysctls, ipvsLoaded, setSysctls } from '../agent/node-sysctls.ts';
import { logger } from '../log.ts';
import { KubeClient } from '../runtime/kube-client.ts';
import { UsageError, boolFlag, durationFlag, listFlag, stringFlag, type FlagSpecs, type ParsedArgs } from './args.ts';
import { untilSignal } from './signals.ts';

export const agentFlags: FlagSpecs = {
  'node-name': { type: 'string', help: 'this node\'s name (default: $NODE_NAME)' },
  'proxy-mode': { type: 'string', help: 'iptables (default), nftables or ipvs; also $EXTBACKEND_PROXY_MODE' },
  'ipvs-scheduler': { type: 'string', help: `IPVS scheduler: ${SCHEDULERS.join(', ')} (rr and lc become wrr and wlc for Services with unequal weights)`, default: 'rr' },
  'nodeport-addresses': { type: 'list', help: 'CIDRs NodePorts answer on (default: every local address)' },
  'external-ip-cidrs': { type: 'list', help: 'Service externalIPs are honoured only inside these CIDRs (default: none)' },
  'sync-period': { type: 'string', help: 'full resync interval', default: '30s' },
  'min-sync-period': { type: 'string', help: 'least time between syncs (bursts of changes collapse)', default: '1s' },
  'http-address': { type: 'string', help: 'where /healthz, /livez, /readyz and /metrics listen', default: ':10266' },
  cleanup: { type: 'boolean', help: 'remove every rule and chain the agent created, then exit' },
  'init-only': { type: 'boolean', help: 'set the kernel settings the agent needs (forwarding; IPVS\'s when ip_vs is loaded), then exit; for a privileged init container' },
};

export async function agentCommand(args: ParsedArgs): Promise<void> {
  const log = logger('agent');
  if (boolFlag(args, 'cleanup')) return cleanupAgent(log);
  if (boolFlag(args, 'init-only')) {
    const changed = await setSysctls(initSysctls(ipvsLoaded()));
    log.info(changed.length ? 'set kernel settings' : 'kernel settings were already as needed', { changed });
    return;
  }
  const nodeName = stringFlag(args, 'node-name') ?? process.env.NODE_NAME;
  if (!nodeName) throw new UsageError('agent: --node-name (or $NODE_NAME) is required');
  const mode = (stringFlag(args, 'proxy-mode') ?? process.env.EXTBACKEND_PROXY_MODE ?? 'iptables') as ProxyMode;
  if (!['iptables', 'nftables', 'ipvs'].includes(mode)) throw new UsageError(`--proxy-mode must be iptables, nftables or ipvs, got "${mode}"`);
  const scheduler = (stringFlag(args, 'ipvs-scheduler') ?? 'rr') as Scheduler;
  if (!SCHEDULERS.includes(scheduler)) throw new UsageError(`--ipvs-scheduler must be one of ${SCHEDULERS.join(', ')}, got "${scheduler}"`);
  const client = await KubeClient.fromEnvironment(stringFlag(args, 'kubeconfig'));
  const abort = new AbortController();
  void untilSignal().then((sig) => {
    log.info('shutting down; the rules stay in place', { signal: sig });
    abort.abort();
  });
  const agent = await startAgent({
    client,
    log,
    nodeName,
    mode,
    nodePortCIDRs: listFlag(args, 'nodeport-addresses'),
    externalIPCIDRs: listFlag(args, 'external-ip-cidrs'),
    ipvsScheduler: scheduler,
    syncPeriodMs: durationFlag(args, 'sync-period') ?? 30_000,
    minSyncPeriodMs: durationFlag(args, 'min-sync-period') ?? 1_000,
    httpAddress: stringFlag(args, 'http-address'),
    signal: abort.signal,
  });
  await agent.done;
  await client.close();
}
