import type { HealthCheckSpec } from '../probes/targets.ts';

// The ExternalBackend API as TypeScript types (mirrors crds/extbackend.io_externalbackends.yaml)
// and the names and labels DESIGN.md fixes as contracts.

export const GROUP = 'extbackend.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = 'ExternalBackend';
export const PLURAL = 'externalbackends';

export const FIELD_MANAGER = 'extbackend-operator';
export const PROXY_NAME_LABEL = 'service.kubernetes.io/service-proxy-name';
export const PROXY_NAME = 'extbackend';
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
export const MANAGED_BY_LABEL = 'endpointslice.kubernetes.io/managed-by';
export const MANAGED_BY = 'operator.extbackend.io';
export const SKIP_MIRROR_LABEL = 'endpointslice.kubernetes.io/skip-mirror';
export const BACKEND_LABEL = 'extbackend.io/backend';
export const APP_MANAGED_BY_LABEL = 'app.kubernetes.io/managed-by';
export const TOPOLOGY_KEYS_ANNOTATION = 'extbackend.io/topology-keys';
export const ENDPOINT_TOPOLOGY_ANNOTATION = 'extbackend.io/endpoint-topology';
export const APPLIED_HASH_ANNOTATION = 'extbackend.io/applied-hash';
export const LAST_CHANGE_TRIGGER_TIME = 'endpoints.kubernetes.io/last-change-trigger-time';

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

export interface ExternalBackendSpec {
  addresses: BackendAddress[];
  ports: BackendPort[];
  service?: BackendServiceSpec;
  healthCheck?: HealthCheckSpec;
  endpoints?: { legacyEndpoints?: boolean; maxEndpointsPerSlice?: number };
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
  addresses?: AddressStatus[];
  conditions?: Condition[];
}

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: OwnerReference[];
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface ExternalBackend {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: ObjectMeta;
  spec: ExternalBackendSpec;
  status?: ExternalBackendStatus;
}

/** Any Kubernetes object as it comes off the wire. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [field: string]: unknown;
}
