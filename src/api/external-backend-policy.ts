// The ExternalBackendPolicy API as TypeScript types (mirrors
// crds/extbackend.io_externalbackendpolicies.yaml): a cluster admin's per-namespace
// allow-list of what ExternalBackends may bring in.
import type { ObjectMeta } from '../runtime/kube-object.ts';
import { API_VERSION, type HealthCheckSpec, type ServiceType } from './external-backend.ts';

export const POLICY_KIND = 'ExternalBackendPolicy';
export const POLICY_PLURAL = 'externalbackendpolicies';

export interface LabelSelectorRequirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  values?: string[];
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

export interface PortRange {
  port: number;
  endPort?: number;
}

/** A field left out does not restrict; an empty list allows nothing of its kind. */
export interface ExternalBackendPolicySpec {
  namespaceSelector: LabelSelector;
  allowedCIDRs?: string[];
  deniedCIDRs?: string[];
  allowedHostnames?: string[];
  allowedPorts?: PortRange[];
  allowedHealthCheckTypes?: HealthCheckSpec['type'][];
  allowedServiceTypes?: ServiceType[];
}

export interface ExternalBackendPolicy {
  apiVersion: typeof API_VERSION;
  kind: typeof POLICY_KIND;
  metadata: ObjectMeta;
  spec: ExternalBackendPolicySpec;
}
