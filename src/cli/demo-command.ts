// `extbackend demo` (what `npm start` runs). With a cluster configured (--kubeconfig,
// $KUBECONFIG or in-cluster) it runs the operator against it. Without one it starts
// the local control plane, installs the CRDs, runs the operator, applies the samples
// and shows `kubectl get externalbackends` as it changes, until Ctrl-C; then cleans up.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../devcluster/build.ts';
import { startLocalCluster } from '../devcluster/cluster.ts';
import { logger } from '../log.ts';
import { OPERATOR_DEFAULTS, startOperator } from '../operator/operator.ts';
import { KubeClient } from '../runtime/kube-client.ts';
import { stringFlag, type ParsedArgs } from './args.ts';
import { operatorCommand } from './operator-command.ts';
import { untilSignal } from './signals.ts';

const run = promisify(execFile);

function clusterConfigured(args: ParsedArgs): boolean {
  return !!(stringFlag(args, 'kubeconfig') || process.env.KUBECONFIG || process.env.KUBERNETES_SERVICE_HOST);
}

export async function demoCommand(args: ParsedArgs): Promise<void> {
  if (clusterConfigured(args)) {
    logger().info('a cluster is configured: running the operator against it');
    return operatorCommand({ ...args, flags: { ...args.flags, 'leader-elect': false } });
  }
  const log = logger('demo');
  log.info('no cluster configured: starting a local control plane (the first run builds it, which takes a few minutes)');
  const cluster = await startLocalCluster();
  const stopped = untilSignal();
  const abort = new AbortController();
  let operator: Awaited<ReturnType<typeof startOperator>> | undefined;
  const client = await KubeClient.fromEnvironment(cluster.kubeconfig);
  try {
    const kubectl = async (...a: string[]): Promise<string> => (await run(cluster.build.bin('kubectl'), ['--kubeconfig', cluster.kubeconfig, ...a])).stdout;
    await kubectl('apply', '-f', path.join(REPO_ROOT, 'crds'));
    await kubectl('wait', '--for=condition=Established', 'crd', '--all');
    operator = await startOperator({ ...OPERATOR_DEFAULTS, client, log: logger('operator'), leaderElect: false, leaseNamespace: 'default', signal: abort.signal });
    const samples = path.join(REPO_ROOT, 'samples');
    if (existsSync(samples)) await kubectl('apply', '-f', samples);
    process.stdout.write(`\nlocal cluster: ${cluster.server} (Kubernetes ${cluster.version})\n  kubectl --kubeconfig ${cluster.kubeconfig} get externalbackends -A\nCtrl-C stops and cleans up.\n\n`);
    // Show the table whenever it changes.
    let last = '';
    for (;;) {
      const table = await kubectl('get', 'externalbackends', '-A').catch((e: Error) => e.message);
      if (table !== last) {
        process.stdout.write(`${new Date().toISOString()}\n${table}\n`);
        last = table;
      }
      const signal = await Promise.race([stopped, new Promise((r) => setTimeout(r, 1000, undefined))]);
      if (signal) break;
    }
  } finally {
    abort.abort();
    await operator?.done;
    await client.close();
    await cluster.stop();
    log.info('stopped and cleaned up');
  }
}
