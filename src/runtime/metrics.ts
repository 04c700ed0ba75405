// One prom-client registry per operator or agent (tests run several in one process), with
// prom-client's default process and Node.js metrics (CPU, RSS, heap, GC, event-loop lag,
// handles) next to ours. Each metric declares its label names; prom-client rejects others.
import client from 'prom-client';

/** Our sub-second-to-10s default (prom-client's default stops at 10 too, but starts at 5 ms). */
export const DEFAULT_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export type Counter<L extends string = string> = client.Counter<L>;
export type Gauge<L extends string = string> = client.Gauge<L>;
export type Histogram<L extends string = string> = client.Histogram<L>;

/** Drops every series of `metric` whose labels include all of `labels` (an object that is gone). */
export async function removeMatching<L extends string>(metric: Gauge<L> | Counter<L>, labels: Partial<Record<L, string>>): Promise<void> {
  const { values } = await metric.get();
  for (const v of values) {
    const have: Record<string, string | number | undefined> = v.labels;
    if (Object.entries(labels).every(([k, x]) => have[k] === x)) metric.remove(v.labels);
  }
}

interface GaugeReader {
  read: () => number;
  labels: Record<string, string>;
}

export class Registry {
  readonly prometheus = new client.Registry();
  private readonly readers = new Map<string, GaugeReader[]>();

  constructor() {
    client.collectDefaultMetrics({ register: this.prometheus });
    // Kept beside prom-client's nodejs_heap_size_used_bytes: benchmarks and dashboards read this name.
    this.callbackGauge('nodejs_heap_used_bytes', 'V8 heap in use, in bytes.', () => process.memoryUsage().heapUsed);
  }

  counter<L extends string = never>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> {
    return new client.Counter({ name, help, labelNames, registers: [this.prometheus] });
  }

  gauge<L extends string = never>(name: string, help: string, labelNames: readonly L[] = []): Gauge<L> {
    return new client.Gauge({ name, help, labelNames, registers: [this.prometheus] });
  }

  histogram<L extends string = never>(name: string, help: string, labelNames: readonly L[] = [], buckets = DEFAULT_BUCKETS): Histogram<L> {
    return new client.Histogram({ name, help, labelNames, buckets, registers: [this.prometheus] });
  }

  /** A gauge whose series are all set afresh at scrape time by `collect` (series that follow objects in a cache come and go with them). */
  collectedGauge<L extends string>(name: string, help: string, labelNames: readonly L[], collect: (gauge: Gauge<L>) => void): Gauge<L> {
    return new client.Gauge({
      name,
      help,
      labelNames,
      registers: [this.prometheus],
      collect() {
        this.reset();
        collect(this);
      },
    });
  }

  /** A gauge read at scrape time; several readers (e.g. one per controller) may share a name, each with its own labels. */
  callbackGauge(name: string, help: string, read: () => number, labels: Record<string, string> = {}): void {
    let readers = this.readers.get(name);
    if (!readers) {
      const all: GaugeReader[] = (readers = []);
      this.readers.set(name, all);
      this.collectedGauge(name, help, Object.keys(labels), (gauge) => {
        for (const r of all) gauge.set(r.labels, r.read());
      });
    }
    readers.push({ read, labels });
  }

  /** The exposition page, in the format `contentType` names. */
  render(): Promise<string> {
    return this.prometheus.metrics();
  }

  get contentType(): string {
    return this.prometheus.contentType;
  }
}
