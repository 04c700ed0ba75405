// `extbackend operator`: flags to OperatorOptions, signals to a clean shutdown.
import { logger } from '../log.ts';
import { startOperator } from '../operator/operator.ts';
import { CLIENT_DEFAULTS, KubeClient } from '../runtime/kube-client.ts';
import { boolFlag, durationFlag, intFlag, listFlag, numberFlag, stringFlag, type FlagSpecs, type ParsedArgs } from './args.ts';
import { untilSignal } from './signals.ts';

export const operatorFlags: FlagSpecs = {
  namespace: { type: 'string', help: 'watch only this namespace (default: all namespaces)' },
  workers: { type: 'string', help: 'concurrent reconciles', default: '4' },
  'leader-elect': { type: 'boolean', help: 'take part in leader election; only the leader writes', default: 'true' },
  'leader-election-namespace': { type: 'string', help: 'namespace of the Lease (default: $POD_NAMESPACE, else extbackend-system)' },
  'leader-election-id': { type: 'string', help: 'name of the Lease', default: 'extbackend-operator' },
  'http-address': { type: 'string', help: 'where /healthz, /readyz and /metrics listen', default: ':8080' },
  'allow-cluster-addresses': { type: 'boolean', help: 'allow endpoint addresses inside the service/pod CIDRs, node IPs and API server addresses (cluster-wide)' },
  'service-cidr': { type: 'list', help: 'extra service CIDRs to refuse (comma-separated), besides the ServiceCIDR objects' },
  'pod-cidr': { type: 'list', help: 'extra pod CIDRs to refuse (comma-separated), besides the nodes\' podCIDRs' },
  'dns-server': { type: 'list', help: 'DNS servers for hostnames, e.g. 10.96.0.10 or 127.0.0.1:5353 (default: the system resolver\'s)' },
  'require-policy': { type: 'boolean', help: 'publish nothing for namespaces no ExternalBackendPolicy matches (default: such namespaces are unrestricted)' },
  'dns-refresh': { type: 'string', help: 'longest time before a hostname is resolved again (shorter when its TTL is)', default: '30s' },
  'kube-api-qps': { type: 'string', help: 'client-side limit on API requests per second, after a burst', default: String(CLIENT_DEFAULTS.qps) },
  'kube-api-burst': { type: 'string', help: 'API requests that may go at once before --kube-api-qps applies', default: String(CLIENT_DEFAULTS.burst) },
  'kube-api-timeout': { type: 'string', help: 'longest wait for the API server to answer one request (lease requests: half the renew deadline)', default: '30s' },
};

export async function operatorCommand(args: ParsedArgs): Promise<void> {
  const log = logger('operator');
  const client = await KubeClient.fromEnvironment(stringFlag(args, 'kubeconfig'), {
    qps: numberFlag(args, 'kube-api-qps', 0.1, 10_000) ?? CLIENT_DEFAULTS.qps,
    burst: intFlag(args, 'kube-api-burst', 1, 100_000) ?? CLIENT_DEFAULTS.burst,
    timeoutMs: durationFlag(args, 'kube-api-timeout') ?? CLIENT_DEFAULTS.timeoutMs,
  });
  const abort = new AbortController();
  void untilSignal().then((sig) => {
    log.info('shutting down', { signal: sig });
    abort.abort();
  });
  const running = await startOperator({
    client,
    log,
    namespace: stringFlag(args, 'namespace'),
    workers: intFlag(args, 'workers', 1, 256) ?? 4,
    leaderElect: boolFlag(args, 'leader-elect'),
    leaseNamespace: stringFlag(args, 'leader-election-namespace') ?? process.env.POD_NAMESPACE ?? 'extbackend-system',
    leaseName: stringFlag(args, 'leader-election-id')!,
    identity: process.env.POD_NAME,
    httpAddress: stringFlag(args, 'http-address'),
    allowClusterAddresses: boolFlag(args, 'allow-cluster-addresses'),
    extraServiceCIDRs: listFlag(args, 'service-cidr'),
    extraPodCIDRs: listFlag(args, 'pod-cidr'),
    dnsServers: listFlag(args, 'dns-server'),
    dnsRefreshMs: durationFlag(args, 'dns-refresh') ?? 30_000,
    requirePolicy: boolFlag(args, 'require-policy'),
    signal: abort.signal,
  });
  await running.done;
  await client.close();
}
