// Runs probes: one timer per target at a fixed cadence with a random first offset
// (so thousands of targets spread over the period), bounded concurrency, timeouts
// enforced by each probe. Only a readiness flip (or a target's first result) calls
// onChange, so a flapping target inside its thresholds costs no API writes.
import type { Logger } from '../log.ts';
import { removeMatching, type Registry } from '../runtime/metrics.ts';
import { runProbe, type ProbeResult, type ProbeSpec } from './probe.ts';
import { initialHealth, recordResult, type TargetHealth, type Thresholds } from './threshold.ts';

export interface ProbeTarget {
  /** Unique per backend, address and probed port. */
  key: string;
  /** The owner to notify (the ExternalBackend's namespace/name). */
  owner: string;
  ip: string;
  port: number;
  spec: ProbeSpec;
  thresholds: Thresholds;
  periodMs: number;
  initialDelayMs: number;
  /** What is published now, so a restart does not flap endpoints before the first probe. */
  publishedHealthy?: boolean;
}

interface Scheduled {
  target: ProbeTarget;
  signature: string;
  health: TargetHealth;
  timer?: NodeJS.Timeout;
  nextAt: number;
  running: boolean;
  removed: boolean;
}

export interface SchedulerOptions {
  onChange: (owner: string) => void;
  maxConcurrent?: number;
  metrics?: Registry;
  probe?: (ip: string, port: number, spec: ProbeSpec) => Promise<ProbeResult>;
  /** Cap on the random delay before a brand-new target's first probe. */
  newTargetJitterMs?: number;
  /** Where a failure of the scheduler itself is reported (a probe's failure is a result, not this). */
  log?: Logger;
}

export class ProbeScheduler {
  private readonly targets = new Map<string, Scheduled>();
  private readonly byOwner = new Map<string, Set<string>>();
  private readonly waiting: (() => void)[] = [];
  private active = 0;
  private readonly o: Required<Omit<SchedulerOptions, 'metrics' | 'log'>> & Pick<SchedulerOptions, 'metrics' | 'log'>;
  private readonly duration;
  private readonly results;
  private readonly lateness;
  private stopped = false;

  constructor(options: SchedulerOptions) {
    this.o = {
      ...options,
      maxConcurrent: options.maxConcurrent ?? 512,
      probe: options.probe ?? runProbe,
      newTargetJitterMs: options.newTargetJitterMs ?? 1000,
    };
    const m = options.metrics;
    this.duration = m?.histogram('extbackend_probe_duration_seconds', 'Time one health probe took.', ['type']);
    this.results = m?.counter('extbackend_probe_results_total', 'Probe results by backend, type and outcome (success, failure, timeout, error).', ['namespace', 'backend', 'type', 'outcome']);
    this.lateness = m?.histogram('extbackend_probe_lateness_seconds', 'How late a probe started against its schedule.', [], [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5]);
    m?.callbackGauge('extbackend_probe_targets', 'Probe targets scheduled.', () => this.targets.size);
  }

  get size(): number {
    return this.targets.size;
  }

  health(key: string): TargetHealth | undefined {
    return this.targets.get(key)?.health;
  }

  /** Makes the owner's targets exactly `targets`: new ones start, gone ones stop, changed ones restart. */
  setTargets(owner: string, targets: ProbeTarget[]): void {
    if (this.stopped) return;
    const keys = new Set(targets.map((t) => t.key));
    for (const key of this.byOwner.get(owner) ?? []) if (!keys.has(key)) this.remove(key);
    this.byOwner.set(owner, keys);
    for (const target of targets) {
      const signature = JSON.stringify([target.ip, target.port, target.spec, target.thresholds, target.periodMs, target.initialDelayMs]);
      const existing = this.targets.get(target.key);
      if (existing?.signature === signature) continue;
      const health = existing?.health ?? initialHealth(target.publishedHealthy);
      if (existing) this.remove(target.key);
      // New targets probe soon; known-published ones (e.g. after a restart) spread over the period.
      const spread = target.publishedHealthy === undefined ? Math.min(this.o.newTargetJitterMs, target.periodMs) : target.periodMs;
      const first = Date.now() + target.initialDelayMs + Math.random() * spread;
      const s: Scheduled = { target, signature, health, nextAt: first, running: false, removed: false };
      this.targets.set(target.key, s);
      this.arm(s);
    }
  }

  removeOwner(owner: string): void {
    for (const key of this.byOwner.get(owner) ?? []) this.remove(key);
    this.byOwner.delete(owner);
    // A backend without probes (deleted, or its healthCheck dropped) has no results series either.
    const [namespace = '', backend = ''] = owner.split('/');
    if (this.results) void removeMatching(this.results, { namespace, backend });
  }

  stop(): void {
    this.stopped = true;
    for (const key of [...this.targets.keys()]) this.remove(key);
    this.byOwner.clear();
  }

  private remove(key: string): void {
    const s = this.targets.get(key);
    if (!s) return;
    s.removed = true;
    clearTimeout(s.timer);
    this.targets.delete(key);
  }

  private arm(s: Scheduled): void {
    s.timer = setTimeout(() => {
      this.fire(s).catch((err: unknown) => this.o.log?.error('probe scheduling failed', { target: s.target.key, error: err instanceof Error ? err.message : String(err) }));
    }, Math.max(0, s.nextAt - Date.now()));
  }

  private async acquire(): Promise<void> {
    if (this.active < this.o.maxConcurrent) {
      this.active++;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.active--;
  }

  private async fire(s: Scheduled): Promise<void> {
    if (s.removed) return;
    const { target } = s;
    const scheduledAt = s.nextAt;
    // Fixed cadence: the next probe is due one period after this one was due, whatever this one takes.
    s.nextAt = scheduledAt + target.periodMs;
    while (s.nextAt < Date.now()) s.nextAt += target.periodMs;
    this.arm(s);
    if (s.running) return; // the previous probe still runs (timeout > period): skip this round
    s.running = true;
    await this.acquire();
    const started = Date.now();
    this.lateness?.observe((started - scheduledAt) / 1000);
    try {
      // A probe that throws (a custom one, or a bug) counts as failed, with its message.
      const result = await this.o.probe(target.ip, target.port, target.spec).catch((err: unknown): ProbeResult => ({ ok: false, outcome: 'error', error: err instanceof Error ? err.message : String(err) }));
      this.duration?.observe({ type: target.spec.type }, (Date.now() - started) / 1000);
      if (s.removed) return;
      // Per backend (the owner is namespace/name), so an alert can tell a whole backend erroring from one host.
      const [namespace = '', backend = ''] = target.owner.split('/');
      this.results?.inc({ namespace, backend, type: target.spec.type, outcome: result.outcome });
      const { state, changed } = recordResult(s.health, result.ok, result.error, target.thresholds, new Date().toISOString());
      s.health = state;
      if (changed) this.o.onChange(target.owner);
    } finally {
      s.running = false;
      this.release();
    }
  }
}
