// Runs the real operator in the test process against the shared control plane,
// scoped to one test's namespace, and counts the API writes it makes.
import type { ExecutionContext } from 'ava';
import { logger } from '../../src/log.ts';
import { OPERATOR_DEFAULTS, startOperator, type OperatorOptions, type RunningOperator } from '../../src/operator/operator.ts';
import { KubeClient } from '../../src/runtime/kube-client.ts';
import { testKubeconfig, waitFor } from './cluster.ts';

export interface TestOperator {
  running: RunningOperator;
  client: KubeClient;
  /** Writes to objects (not Events, not the Lease) since start, by "VERB resource". */
  writes: string[];
  stop(): Promise<void>;
  /** Waits until caches synced and the queue is empty. */
  settle(): Promise<void>;
}

export async function startTestOperator(t: ExecutionContext, namespace: string, overrides: Partial<OperatorOptions> = {}): Promise<TestOperator> {
  const client = await KubeClient.fromEnvironment(testKubeconfig());
  const writes: string[] = [];
  client.onWrite((verb, resource) => {
    if (!['events', 'leases'].includes(resource)) writes.push(`${verb} ${resource}`);
  });
  const abort = new AbortController();
  const running = await startOperator({
    client,
    ...OPERATOR_DEFAULTS,
    log: logger('test-operator').child({ namespace }),
    namespace,
    leaderElect: false,
    leaseNamespace: namespace,
    signal: abort.signal,
    ...overrides,
  });
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    abort.abort();
    await running.done;
    await client.close();
  };
  t.teardown(stop);
  return {
    running,
    client,
    writes,
    stop,
    settle: async () => {
      await waitFor('the operator to sync and drain its queue', () => running.idle(), { timeoutMs: 30_000, intervalMs: 50 });
    },
  };
}
