// Cluster DNS for the local nodes: CoreDNS (built from its module) in the router's
// network namespace, serving cluster.local from the API server, behind the usual
// kube-system/kube-dns Service at 10.96.0.10 (selectorless, with an EndpointSlice to
// the router's address, so each node's kube-proxy leads pods to it). It answers the
// cluster's names only: there is no `forward`, so no query ever reaches the machine's
// resolver.
import type { ChildProcess } from 'node:child_process';
import { Resolver } from 'node:dns/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLUSTER_DNS_IP, CLUSTER_DOMAIN } from './nodes.ts';

export function corefile(bindIP: string, kubeconfig: string): string {
  return `.:53 {
    bind ${bindIP}
    errors
    ready ${bindIP}:8181
    kubernetes ${CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {
        kubeconfig ${kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
`;
}

/** The kube-dns Service and its EndpointSlice, pointing at CoreDNS on `dnsIP`. */
export function kubeDnsManifest(dnsIP: string): string {
  const ports = [
    { name: 'dns', port: 53, protocol: 'UDP' },
    { name: 'dns-tcp', port: 53, protocol: 'TCP' },
  ];
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'List',
    items: [
      {
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: 'kube-dns', namespace: 'kube-system', labels: { 'k8s-app': 'kube-dns', 'kubernetes.io/name': 'CoreDNS' } },
        spec: { clusterIP: CLUSTER_DNS_IP, ports: ports.map((p) => ({ ...p, targetPort: 53 })) },
      },
      {
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: {
          name: 'kube-dns-local',
          namespace: 'kube-system',
          labels: { 'kubernetes.io/service-name': 'kube-dns', 'endpointslice.kubernetes.io/managed-by': 'local-cluster.extbackend.io' },
        },
        addressType: 'IPv4',
        endpoints: [{ addresses: [dnsIP], conditions: { ready: true } }],
        ports,
      },
    ],
  });
}

/** Waits until CoreDNS on `bindIP` answers for the kubernetes Service (or has exited). */
export async function waitForClusterDns(bindIP: string, child: ChildProcess, timeoutMs = 60_000): Promise<void> {
  const resolver = new Resolver({ timeout: 1000, tries: 1 });
  resolver.setServers([bindIP]);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`CoreDNS exited (${child.exitCode ?? child.signalCode}); see its log`);
    const answer = await resolver.resolve4(`kubernetes.default.svc.${CLUSTER_DOMAIN}`).catch(() => [] as string[]);
    if (answer.length) return;
    if (Date.now() > deadline) throw new Error(`CoreDNS does not answer for kubernetes.default.svc after ${timeoutMs / 1000} s`);
    await sleep(200);
  }
}
