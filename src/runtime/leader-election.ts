// Leader election on a coordination.k8s.io/v1 Lease, with client-go's timing rules:
// a candidate takes the lease only when its record has not changed for a whole lease
// duration as observed on the candidate's own clock (no clock sync assumed); the
// leader renews every retry period and gives up if it could not renew within the
// renew deadline. Writes use resourceVersion, so two candidates never both win.
// Every lease request has a timeout of at most half the renew deadline (and never past
// it), so a renewal that hangs on a black-holed connection cannot keep a leader that
// the API server no longer sees: it gives up at the renew deadline, before a rival may
// take over at the lease duration.
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

/** What to do when the Lease's namespace does not exist: said once, in words a person can act on. */
export function missingNamespace(namespace: string, apiMessage: string): string {
  return (
    `cannot create the leader Lease: namespace "${namespace}" does not exist (${apiMessage}). ` +
    `Install with "kubectl apply -k" of this repository (it creates the extbackend-system namespace), ` +
    `or pass --leader-election-namespace=<an existing namespace>, or --leader-elect=false to run a single replica without a Lease`
  );
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

  /** Lease requests skip the client's rate limit and end by `deadline` (ms since epoch). */
  private requestOptions(deadline: number): { timeoutMs: number; urgent: true } {
    return { timeoutMs: Math.max(1, Math.min(this.o.renewDeadlineMs / 2, deadline - Date.now())), urgent: true };
  }

  /** One attempt to acquire or renew, given up at `deadline`; true when we hold the lease afterwards. */
  private async tryAcquireOrRenew(deadline = Date.now() + this.o.renewDeadlineMs): Promise<boolean> {
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
      lease = await this.o.client.get<Lease>(this.path(this.o.name), undefined, this.requestOptions(deadline));
    } catch (err) {
      if (!isNotFound(err)) throw err;
      const created: Lease = {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { name: this.o.name, namespace: this.o.namespace },
        spec: desiredSpec(),
      };
      try {
        await this.o.client.request('POST', this.path(), { body: created, ...this.requestOptions(deadline) });
        return true;
      } catch (e) {
        if (e instanceof ApiError && e.code === 409) return false;
        if (isNotFound(e)) throw new Error(missingNamespace(this.o.namespace, (e as Error).message));
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
      await this.o.client.request('PUT', this.path(this.o.name), { body: { ...lease, spec: desiredSpec(lease.spec) }, ...this.requestOptions(deadline) });
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.code === 409) return false; // someone else wrote first
      throw err;
    }
  }

  /** Resolves once this replica leads. */
  async acquire(signal: AbortSignal): Promise<void> {
    this.o.log.info('waiting to acquire the leader lease', { lease: `${this.o.namespace}/${this.o.name}`, identity: this.o.identity });
    let lastError = '';
    while (!signal.aborted) {
      const won = await this.tryAcquireOrRenew().catch((err: Error) => {
        // Said again only when it changes: the attempt repeats every retry period.
        if (err.message !== lastError) this.o.log.warn('leader election attempt failed; retrying', { error: err.message });
        lastError = err.message;
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
      const ok = await this.tryAcquireOrRenew(lastRenew + this.o.renewDeadlineMs).catch((err: Error) => {
        this.o.log.warn('lease renewal failed', { error: err.message });
        return false;
      });
      if (ok) lastRenew = Date.now();
      else if (Date.now() - lastRenew >= this.o.renewDeadlineMs) {
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
    const deadline = Date.now() + this.o.renewDeadlineMs;
    try {
      const lease = await this.o.client.get<Lease>(this.path(this.o.name), undefined, this.requestOptions(deadline));
      if (lease.spec.holderIdentity !== this.o.identity) return;
      await this.o.client.request('PUT', this.path(this.o.name), {
        body: { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: microTime() } },
        ...this.requestOptions(deadline),
      });
    } catch (err) {
      this.o.log.warn('could not release the lease', { error: (err as Error).message });
    }
  }
}
