// Kubernetes Events (core/v1) about our objects, shown by `kubectl describe`.
// Repeats of the same event within a few minutes are counted, not re-created.
import { randomBytes } from 'node:crypto';
import type { Logger } from '../log.ts';
import type { KubeObject } from './kube-object.ts';
import { resourcePath, type KubeClient } from './kube-client.ts';

export interface EventRecorder {
  event(obj: KubeObject, type: 'Normal' | 'Warning', reason: string, message: string): void;
}

const DEDUP_MS = 5 * 60_000;

export class ApiEventRecorder implements EventRecorder {
  private readonly client: KubeClient;
  private readonly component: string;
  private readonly log: Logger;
  private readonly recent = new Map<string, { name: string; count: number; at: number }>();

  constructor(client: KubeClient, component: string, log: Logger) {
    this.client = client;
    this.component = component;
    this.log = log;
  }

  event(obj: KubeObject, type: 'Normal' | 'Warning', reason: string, message: string): void {
    void this.send(obj, type, reason, message).catch((err: Error) => this.log.warn('could not record event', { reason, error: err.message }));
  }

  private async send(obj: KubeObject, type: string, reason: string, message: string): Promise<void> {
    const ns = obj.metadata.namespace ?? 'default';
    const key = `${obj.metadata.uid}|${type}|${reason}|${message}`;
    const now = new Date().toISOString();
    const prev = this.recent.get(key);
    const path = resourcePath({ group: '', version: 'v1', plural: 'events', namespace: ns });
    if (prev && Date.now() - prev.at < DEDUP_MS) {
      prev.count++;
      prev.at = Date.now();
      await this.client.patch(`${path}/${prev.name}`, { count: prev.count, lastTimestamp: now }, 'merge');
      return;
    }
    const name = `${obj.metadata.name}.${Date.now().toString(16)}${randomBytes(2).toString('hex')}`;
    this.recent.set(key, { name, count: 1, at: Date.now() });
    if (this.recent.size > 1000) this.recent.delete(this.recent.keys().next().value!);
    await this.client.create(path, {
      metadata: { name, namespace: ns },
      involvedObject: { apiVersion: obj.apiVersion, kind: obj.kind, name: obj.metadata.name, namespace: ns, uid: obj.metadata.uid, resourceVersion: obj.metadata.resourceVersion },
      type,
      reason,
      message,
      source: { component: this.component },
      reportingComponent: this.component,
      firstTimestamp: now,
      lastTimestamp: now,
      count: 1,
    });
  }
}
