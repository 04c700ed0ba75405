// The labels and annotations DESIGN.md §2 fixes as contracts between operator, agent and
// the cluster's other controllers, and the values they carry.

/** Our server-side apply field manager, and the app.kubernetes.io/managed-by value on what we create. */
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

