// `extbackend demo` (what `npm start` runs). With a cluster configured (--kubeconfig,
// $KUBECONFIG or in-cluster) it runs the operator against it. Without one it starts
// the local control plane, installs the CRDs, runs the operator, applies the samples
// and shows `kubectl get externalbackends` as it changes, until Ctrl-C; then cleans up.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../devcluster/build.ts';
import { startLocalCluster, type LocalCluster } from '../devcluster/cluster.ts';
import { createDemoNetwork, type DemoNetwork } from '../devcluster/demo-network.ts';
import { kubeconfigViaAddress } from '../devcluster/pki.ts';
import type { Logger } from '../log.ts';
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
  // A closed stdout (`npm start | head`) must not skip the cleanup below.
  process.stdout.on('error', () => undefined);
  log.info('no cluster configured: starting a local control plane (the first run builds it, which takes a few minutes)');
  const cluster = await startLocalCluster();
  const stopped = untilSignal();
  const abort = new AbortController();
  let operator: Awaited<ReturnType<typeof startOperator>> | undefined;
  let network: DemoNetwork | undefined;
  const client = await KubeClient.fromEnvironment(cluster.kubeconfig);
  try {
    const kubectl = async (...a: string[]): Promise<string> => (await run(cluster.build.bin('kubectl'), ['--kubeconfig', cluster.kubeconfig, ...a])).stdout;
    await kubectl('apply', '-k', path.join(REPO_ROOT, 'crds'));
    await kubectl('wait', '--for=condition=Established', 'crd', '--all');
    operator = await startOperator({ ...OPERATOR_DEFAULTS, client, log: logger('operator'), leaderElect: false, leaseNamespace: 'default', signal: abort.signal });
    const samples = path.join(REPO_ROOT, 'samples');
    const sampleText = existsSync(samples) ? readdirSync(samples).map((f) => readFileSync(path.join(samples, f), 'utf8')).join('\n') : '';
    if (sampleText) await kubectl('apply', '-f', samples);
    if (process.getuid?.() === 0 && process.env.EXTBACKEND_DEMO_AGENT !== 'false') {
      network = await startDemoAgent(cluster, sampleText, log);
    } else {
      log.info('not root: the demo runs without a node agent (it needs network namespaces)');
    }
    process.stdout.write(`\nlocal cluster: ${cluster.server} (Kubernetes ${cluster.version})\n  kubectl --kubeconfig ${cluster.kubeconfig} get externalbackends -A\nCtrl-C stops and cleans up.\n\n`);
    // Show the table whenever it changes (ageing alone is no change); once everything
    // is Ready, try each Service from the node.
    let last = '';
    let tried = false;
    let attempts = 0;
    const withoutAge = (table: string): string => table.replace(/\s+\S+$/gm, '');
    for (;;) {
      const table = await kubectl('get', 'externalbackends', '-A').catch((e: Error) => e.message);
      if (withoutAge(table) !== withoutAge(last)) {
        process.stdout.write(`${new Date().toISOString()}\n${table}\n`);
        last = table;
      }
      if (network && !tried && /Ready/.test(table) && !/NotReady|Degraded|Rejected|<none>/.test(table)) {
        // The agent may still be programming: try again quietly for a while before showing a failure.
        const result = await tryServicesFromNode(network, kubectl);
        if (result.ok || ++attempts >= 20) {
          process.stdout.write(result.text);
          tried = true;
        }
      }
      const signal = await Promise.race([stopped, new Promise((r) => setTimeout(r, 1000, undefined))]);
      if (signal) break;
    }
  } finally {
    await network?.destroy();
    abort.abort();
    await operator?.done;
    await client.close();
    await cluster.stop();
    log.info('stopped and cleaned up');
  }
}

/** A node namespace running the agent, and a namespace answering on every sample address. */
async function startDemoAgent(cluster: LocalCluster, samples: string, log: Logger): Promise<DemoNetwork> {
  const addresses = [...new Set([...samples.matchAll(/\bip: ([0-9.]+)/g)].map((m) => m[1]!))];
  const ports = [...new Set([...samples.matchAll(/\b(?:port|targetPort): (\d+)/g)].map((m) => Number(m[1])))];
  const network = await createDemoNetwork(addresses, ports);
  const kubeconfig = path.join(path.dirname(cluster.kubeconfig), 'demo-agent.kubeconfig');
  writeFileSync(kubeconfig, kubeconfigViaAddress(cluster.kubeconfigYaml, network.hostIP), { mode: 0o600 });
  const agent = network.spawnInNode(process.execPath, ['--disable-warning=ExperimentalWarning', path.join(REPO_ROOT, 'bin', 'extbackend.js'), 'agent', '--kubeconfig', kubeconfig, '--node-name', 'demo-node', '--min-sync-period', '200ms', '--http-address', `${network.nodeIP}:10266`], { ...process.env, EXTBACKEND_LOG_FORMAT: 'json' });
  agent.stderr?.on('data', (d: Buffer) => {
    for (const line of d.toString().split('\n').filter(Boolean)) if (/"level":"(warn|error)"/.test(line)) log.warn('agent', { line });
  });
  log.info('node agent running in a network namespace; the sample addresses answer from another', { node: network.node, addresses: addresses.length });
  return network;
}

/** Connects to every Service from the node namespace; says who answered. */
async function tryServicesFromNode(network: DemoNetwork, kubectl: (...a: string[]) => Promise<string>): Promise<{ ok: boolean; text: string }> {
  const services = JSON.parse(await kubectl('get', 'services', '-A', '-l', 'extbackend.io/backend', '-o', 'json')) as {
    items: { metadata: { name: string; namespace: string }; spec: { clusterIP: string; ports: { port: number }[] } }[];
  };
  const probe = "const s=require('net').connect(+process.argv[2],process.argv[1]);let b='';s.setTimeout(2000,()=>{console.log('no answer');s.destroy()});s.on('data',d=>b+=d);s.on('end',()=>console.log(b.trim().split('\\n').pop()));s.on('error',e=>console.log(e.code))";
  const lines: string[] = [];
  for (const svc of services.items) {
    const port = svc.spec.ports[0]!.port;
    const answer = (await network.execInNode(process.execPath, ['-e', probe, svc.spec.clusterIP, String(port)]).catch((e: Error) => e.message)).trim();
    lines.push(`  ${svc.metadata.namespace}/${svc.metadata.name} ${svc.spec.clusterIP}:${port} -> answered by ${answer}`);
  }
  return {
    ok: lines.every((l) => /answered by \d+\.\d+\.\d+\.\d+:\d+$/.test(l)),
    text: `from the demo node (${network.node}), through the agent's rules:\n${lines.join('\n')}\n\n`,
  };
}
