// Node objects shaped like a kubelet's, for benchmarks of what caches Nodes: a big
// cluster's Nodes are mostly images, conditions and labels that a consumer may not read.
import type { KubeClient } from '../src/runtime/kube-client.ts';
/** A Node as a kubelet leaves it: labels, 50 images, conditions, addresses, a pod CIDR. */
function kubeletNode(i: number): { node: object; status: object } {
  const name = `bench-node-${i}`;
  const ip = `10.${100 + Math.floor(i / 65536)}.${Math.floor(i / 256) % 256}.${i % 256}`;
  const condition = (type: string, status: string, reason: string, message: string) => ({ type, status, reason, message, lastHeartbeatTime: '2026-12-01T10:00:00Z', lastTransitionTime: '2026-11-01T10:00:00Z' });
  const node = {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name,
      labels: { 'kubernetes.io/hostname': name, 'kubernetes.io/os': 'linux', 'kubernetes.io/arch': 'amd64', 'beta.kubernetes.io/os': 'linux', 'beta.kubernetes.io/arch': 'amd64', 'node.kubernetes.io/instance-type': 'n2-standard-8', 'topology.kubernetes.io/region': 'europe-west1', 'topology.kubernetes.io/zone': `europe-west1-${'bcd'[i % 3]}`, 'cloud.google.com/gke-nodepool': 'default-pool' },
      annotations: { 'node.alpha.kubernetes.io/ttl': '0', 'volumes.kubernetes.io/controller-managed-attach-detach': 'true', 'csi.volume.kubernetes.io/nodeid': JSON.stringify({ 'pd.csi.storage.gke.io': `projects/p/zones/z/instances/${name}` }) },
    },
    spec: { podCIDR: `10.${(i >> 8) % 256}.${i % 256}.0/24`, podCIDRs: [`10.${(i >> 8) % 256}.${i % 256}.0/24`], providerID: `gce://project/europe-west1-b/${name}` },
  };
  const status = {
    capacity: { cpu: '8', 'ephemeral-storage': '101203200Ki', 'hugepages-2Mi': '0', memory: '32880004Ki', pods: '110' },
    allocatable: { cpu: '7910m', 'ephemeral-storage': '47093746742', 'hugepages-2Mi': '0', memory: '29094788Ki', pods: '110' },
    conditions: [
      condition('MemoryPressure', 'False', 'KubeletHasSufficientMemory', 'kubelet has sufficient memory available'),
      condition('DiskPressure', 'False', 'KubeletHasNoDiskPressure', 'kubelet has no disk pressure'),
      condition('PIDPressure', 'False', 'KubeletHasSufficientPID', 'kubelet has sufficient PID available'),
      condition('Ready', 'True', 'KubeletReady', 'kubelet is posting ready status. AppArmor enabled'),
    ],
    addresses: [{ type: 'InternalIP', address: ip }, { type: 'Hostname', address: name }],
    daemonEndpoints: { kubeletEndpoint: { Port: 10250 } },
    nodeInfo: { machineID: 'f'.repeat(32), systemUUID: 'a'.repeat(36), bootID: 'b'.repeat(36), kernelVersion: '6.1.0-57-amd64', osImage: 'Debian GNU/Linux 12 (bookworm)', containerRuntimeVersion: 'containerd://2.4.2', kubeletVersion: 'v1.36.3', kubeProxyVersion: '', operatingSystem: 'linux', architecture: 'amd64' },
    images: Array.from({ length: 50 }, (_, k) => ({
      names: [`registry.example.com/team-${k % 7}/app-${k}@sha256:${(k.toString(16) + 'e'.repeat(64)).slice(0, 64)}`, `registry.example.com/team-${k % 7}/app-${k}:v1.${k}.0`],
      sizeBytes: 10_000_000 + k * 1_234_567,
    })),
  };
  return { node, status };
}
export const NODE_BYTES = JSON.stringify(kubeletNode(0)).length;

/** Makes `count` kubelet-shaped Nodes (status through its subresource, as a kubelet writes it); returns seconds taken. */
export async function makeNodes(client: KubeClient, count: number): Promise<number> {
  const started = Date.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < count) {
        const { node, status } = kubeletNode(next++);
        const made = await client.create<{ metadata: { name: string } }>('/api/v1/nodes', node);
        await client.patch(`/api/v1/nodes/${made.metadata.name}/status`, { status }, 'merge');
      }
    }),
  );
  return (Date.now() - started) / 1000;
}
