// Leader election on a coordination.k8s.io/v1 Lease, with client-go's timing rules:
// a candidate takes the lease only when its record has not changed for a whole lease
// duration as observed on the candidate's own clock (no clock sync assumed); the
// leader renews every retry period and gives up if it could not renew within the
// renew deadline. Writes use resourceVersion, so two candidates never both win.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.ts';
import { ApiError, isNotFound, resourcePath, type KubeClient } from './kube-client.ts';

export interface LeaderElectionOptions {
  client: KubeClient;
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  log: Logger;
}

interface Lease {
  apiVersion: 'coordination.k8s.io/v1';
  kind: 'Lease';
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

function microTime(d = new Date()): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

export class LeaderElector {
  private readonly o: Required<LeaderElectionOptions>;
  private observedRecord = '';
  private observedAt = 0;
  private leading = false;

  constructor(options: LeaderElectionOptions) {
    this.o = { leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000, ...options };
  }

  get isLeader(): boolean {
    return this.leading;
  }

  private path(name?: string): string {
    return resourcePath({ group: 'coordination.k8s.io', version: 'v1', plural: 'leases', namespace: this.o.namespace, name });
  }

  /** One attempt to acquire or renew; true when we hold the lease afterwards. */
  private async tryAcquireOrRenew(): Promise<boolean> {
    const now = new Date();
    const desiredSpec = (prev?: Lease['spec']): Lease['spec'] => ({
      holderIdentity: this.o.identity,
      leaseDurationSeconds: Math.ceil(this.o.leaseDurationMs / 1000),
      acquireTime: prev?.holderIdentity === this.o.identity && prev.acquireTime ? prev.acquireTime : microTime(now),
      renewTime: microTime(now),
      leaseTransitions: (prev?.leaseTransitions ?? 0) + (prev?.holderIdentity && prev.holderIdentity !== this.o.identity ? 1 : 0),
    });
    let lease: Lease;
    try {
      lease = await this.o.client.get<Lease>(this.path(this.o.name));
    } catch (err) {
      if (!isNotFound(err)) throw err;
      const created: Lease = {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { name: this.o.name, namespace: this.o.namespace },
        spec: desiredSpec(),
      };
      try {
        await this.o.client.create(this.path(), created);
        return true;
      } catch (e) {
        if (e instanceof ApiError && e.code === 409) return false;
        throw e;
      }
    }
    const record = JSON.stringify(lease.spec);
    if (record !== this.observedRecord) {
      this.observedRecord = record;
      this.observedAt = Date.now();
    }
    const holder = lease.spec.holderIdentity;
    const duration = (lease.spec.leaseDurationSeconds ?? 15) * 1000;
    if (holder && holder !== this.o.identity && this.observedAt + duration > Date.now()) return false;
    try {
      await this.o.client.request('PUT', this.path(this.o.name), { body: { ...lease, spec: desiredSpec(lease.spec) } });
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.code === 409) return false; // someone else wrote first
      throw err;
    }
  }

  /** Resolves once this replica leads. */
  async acquire(signal: AbortSignal): Promise<void> {
    this.o.log.info('waiting to acquire the leader lease', { lease: `${this.o.namespace}/${this.o.name}`, identity: this.o.identity });
    while (!signal.aborted) {
      const won = await this.tryAcquireOrRenew().catch((err: Error) => {
        this.o.log.warn('leader election attempt failed', { error: err.message });
        return false;
      });
      if (won) {
        this.leading = true;
        this.o.log.info('became leader', { identity: this.o.identity });
        return;
      }
      await sleep(this.o.retryPeriodMs * (1 + Math.random() * 0.2), undefined, { signal }).catch(() => undefined);
    }
    throw new Error('stopped before acquiring the lease');
  }

  /**
   * Renews until the signal aborts (then releases the lease so a successor need not
   * wait it out) or until renewal fails past the deadline: then resolves with 'lost'.
   */
  async holdUntil(signal: AbortSignal, release = true): Promise<'released' | 'lost'> {
    let lastRenew = Date.now();
    while (!signal.aborted) {
      await sleep(this.o.retryPeriodMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) break;
      const ok = await this.tryAcquireOrRenew().catch((err: Error) => {
        this.o.log.warn('lease renewal failed', { error: err.message });
        return false;
      });
      if (ok) lastRenew = Date.now();
      else if (Date.now() - lastRenew > this.o.renewDeadlineMs) {
        this.leading = false;
        this.o.log.error('lost the leader lease', { identity: this.o.identity });
        return 'lost';
      }
    }
    if (release) await this.release();
    else this.leading = false;
    return 'released';
  }

  private async release(): Promise<void> {
    if (!this.leading) return;
    this.leading = false;
    try {
      const lease = await this.o.client.get<Lease>(this.path(this.o.name));
      if (lease.spec.holderIdentity !== this.o.identity) return;
      await this.o.client.request('PUT', this.path(this.o.name), {
        body: { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: microTime() } },
      });
    } catch (err) {
      this.o.log.warn('could not release the lease', { error: (err as Error).message });
    }
  }
}
