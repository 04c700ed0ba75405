// The ExternalBackend API as TypeScript types (mirrors crds/extbackend.io_externalbackends.yaml),
// and the readings of its spec that operator and probes must agree on.
import type { ObjectMeta } from '../runtime/kube-object.ts';

export const GROUP = 'extbackend.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = 'ExternalBackend';
export const PLURAL = 'externalbackends';

export type Protocol = 'TCP' | 'UDP' | 'SCTP';
export type ServiceType = 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'Headless';

export interface BackendAddress {
  ip?: string;
  hostname?: string;
  nodeName?: string;
  zone?: string;
  region?: string;
  topology?: Record<string, string>;
  weight?: number;
  targetPorts?: Record<string, number>;
  /** 0 is the most preferred; a port is served by the lowest priority with enough healthy hosts. */
  priority?: number;
  /** No new connections while another host can take them; open ones are kept. */
  drain?: boolean;
}

export interface BackendPort {
  name?: string;
  port: number;
  targetPort?: number;
  protocol?: Protocol;
  appProtocol?: string;
  nodePort?: number;
}

export interface BackendServiceSpec {
  type?: ServiceType;
  clusterIP?: string;
  externalTrafficPolicy?: 'Cluster' | 'Local';
  internalTrafficPolicy?: 'Cluster' | 'Local';
  sessionAffinity?: 'None' | 'ClientIP';
  sessionAffinityTimeoutSeconds?: number;
  topologyKeys?: string[];
  healthCheckNodePort?: number;
  proxy?: 'agent' | 'kube-proxy';
  publishNotReadyAddresses?: boolean;
}

export interface HealthCheckSpec {
  type: 'tcp' | 'http' | 'https' | 'grpc';
  port?: number | string;
  periodSeconds?: number;
  timeoutSeconds?: number;
  successThreshold?: number;
  failureThreshold?: number;
  initialDelaySeconds?: number;
  http?: { path?: string; host?: string; headers?: { name: string; value: string }[]; expectedStatuses?: string[] };
  tls?: { serverName?: string; insecureSkipVerify?: boolean; secretName?: string };
  grpc?: { service?: string };
}

export interface ExternalBackendSpec {
  addresses: BackendAddress[];
  ports: BackendPort[];
  service?: BackendServiceSpec;
  healthCheck?: HealthCheckSpec;
  endpoints?: { legacyEndpoints?: boolean; maxEndpointsPerSlice?: number };
  failover?: FailoverSpec;
}

export interface FailoverSpec {
  /** A priority group with fewer healthy hosts than this counts as down (default 1). */
  minReady?: number;
  /** How long a better group must stay healthy before traffic returns to it (default 0). */
  failbackDelaySeconds?: number;
}

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  observedGeneration?: number;
  lastTransitionTime: string;
  reason: string;
  message: string;
}

export interface AddressStatus {
  address: string;
  ips?: string[];
  ready: boolean;
  reason?: string;
  message?: string;
  lastProbeTime?: string;
  lastTransitionTime?: string;
  consecutiveSuccesses?: number;
  consecutiveFailures?: number;
  priority?: number;
  role?: 'active' | 'standby' | 'draining' | 'down';
}

/** The group serving one Service port. */
export interface ActiveGroupStatus {
  /** The port's name, or its number when unnamed. */
  port: string;
  /** Absent when no host of the port is healthy. */
  priority?: number;
  /** Healthy hosts of that group taking new connections. */
  readyHosts: number;
  lastTransitionTime?: string;
  /** A better group that is healthy again, waiting out failbackDelaySeconds. */
  failback?: { priority: number; healthySince: string; at: string };
  /** Why a more preferred group does not serve, or when traffic returns to it. */
  message?: string;
}

/** Status fields that change with every probe: refreshed when status is written, never a reason to write. */
export const VOLATILE_ADDRESS_FIELDS = ['lastProbeTime', 'consecutiveSuccesses', 'consecutiveFailures'] as const;

export interface ExternalBackendStatus {
  observedGeneration?: number;
  state?: string;
  ready?: string;
  readyAddresses?: number;
  totalAddresses?: number;
  clusterIP?: string;
  endpointSlices?: number;
  /** The active priority for kubectl get: "0", "1", "http=0,dns=1" or "none". */
  active?: string;
  activeGroups?: ActiveGroupStatus[];
  addresses?: AddressStatus[];
  conditions?: Condition[];
}

export interface ExternalBackend {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: ObjectMeta;
  spec: ExternalBackendSpec;
  status?: ExternalBackendStatus;
}

/** A spec port's name as Services and EndpointSlices carry it ('' when unnamed). */
export function portName(p: BackendPort): string {
  return p.name ?? '';
}

/** The target port one address serves a spec port on. */
export function targetPortFor(address: BackendAddress, port: BackendPort): number {
  return (port.name ? address.targetPorts?.[port.name] : undefined) ?? port.targetPort ?? port.port;
}
