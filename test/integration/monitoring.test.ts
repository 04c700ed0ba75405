// The monitoring component (config/components/monitoring), for real: promtool checks and
// unit-tests its alerts; its objects apply to the local API server with the
// monitoring.coreos.com CRDs of prometheus-operator's module; and a real Prometheus scrapes
// an in-process operator and an agent in a lab node, fires "no ready address" when every
// host of a backend is killed and resolves it when they return. Every metric name the
// rules and the dashboard query is checked against the live /metrics of both.
import { execFile, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import * as k8s from '@kubernetes/client-node';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { kubeconfigViaAddress } from '../../src/devcluster/pki.ts';
import { ensurePrometheus, monitoringCrdDir } from '../../src/devcluster/prometheus-build.ts';
import { applyYaml, kubectl, testKubeconfig, testNamespace, waitFor } from '../helpers/cluster.ts';
import { waitForOutput } from '../helpers/backends.ts';
import { createLab, type LabHost } from '../helpers/lab.ts';
import { startTestOperator } from '../helpers/operator.ts';
import { COMPONENT_DIR, dashboardQueries, exportedNames, promqlMetricNames, renderRules, ruleGroups, startPrometheus } from '../helpers/prometheus.ts';

const run = promisify(execFile);
const NODE_ARGS = ['--disable-warning=ExperimentalWarning'];
const BIN = path.join(REPO_ROOT, 'bin', 'extbackend.js');
const SERVER = path.join(REPO_ROOT, 'test', 'helpers', 'backend-server.ts');
const UNIT_TESTS = path.join(REPO_ROOT, 'test', 'monitoring', 'alerts.test.yaml');

test('promtool: the rules check, every alert has a runbook, and every alert has a unit test that passes', async (t) => {
  const { promtool } = await ensurePrometheus();
  const groups = await ruleGroups();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'xb-promtool-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));

  // The rules as shipped (annotation templates included) pass `promtool check rules`.
  await writeFile(path.join(dir, 'shipped.yaml'), renderRules(groups));
  const check = await run(promtool, ['check', 'rules', path.join(dir, 'shipped.yaml')]);
  const alerts = groups.flatMap((g) => g.rules).filter((r) => r.alert);
  t.true(alerts.length >= 10, `${alerts.length} alerts`);
  t.regex(check.stdout, new RegExp(`SUCCESS: ${groups.flatMap((g) => g.rules).length} rules found`));

  for (const a of alerts) {
    for (const key of ['summary', 'description', 'runbook']) t.truthy(a.annotations?.[key]?.trim(), `${a.alert} has a ${key} annotation`);
    t.truthy(a.labels?.severity, `${a.alert} has a severity`);
  }
  const unit = k8s.loadYaml<{ tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[] }>(await readFile(UNIT_TESTS, 'utf8'));
  const tested = new Set(unit.tests.flatMap((g) => (g.alert_rule_test ?? []).filter((c) => c.exp_alerts.length > 0).map((c) => c.alertname)));
  t.deepEqual(alerts.map((a) => a.alert).filter((name) => !tested.has(name!)), [], 'alerts without a unit test that sees them fire');

  await writeFile(path.join(dir, 'rules.yaml'), renderRules(groups, { annotations: false }));
  await copyFile(UNIT_TESTS, path.join(dir, 'alerts.test.yaml'));
  const unitRun = await run(promtool, ['test', 'rules', path.join(dir, 'alerts.test.yaml')]).catch((err: { stdout?: string; stderr?: string }) => {
    throw new Error(`promtool test rules failed:\n${err.stdout ?? ''}${err.stderr ?? ''}`);
  });
  t.regex(unitRun.stdout + unitRun.stderr, /SUCCESS/);
});

test('the component applies to the API server with the CRDs of prometheus-operator', async (t) => {
  const crdDir = await monitoringCrdDir();
  const wanted = ['monitoring.coreos.com_prometheusrules.yaml', 'monitoring.coreos.com_servicemonitors.yaml', 'monitoring.coreos.com_podmonitors.yaml'];
  const present = await readdir(crdDir);
  t.deepEqual(wanted.filter((f) => !present.includes(f)), [], `CRD files in ${crdDir}`);
  // Server-side: the CRDs are too large for client-side apply's last-applied annotation.
  for (const f of wanted) {
    await kubectl(['apply', '--server-side', '--force-conflicts', '-f', path.join(crdDir, f)]);
  }
  for (const plural of ['prometheusrules', 'servicemonitors', 'podmonitors']) {
    await kubectl(['wait', '--for=condition=Established', '--timeout=60s', `crd/${plural}.monitoring.coreos.com`]);
  }

  // The component as an overlay would take it, into this test's namespace.
  const ns = await testNamespace(t);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'xb-monitoring-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'kustomization.yaml'), `apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: ${ns}\ncomponents:\n- ${path.relative(dir, COMPONENT_DIR)}\n`);
  await kubectl(['apply', '-k', dir]); // rejects with kubectl's message on any invalid object
  const got = await kubectl(['-n', ns, 'get', 'prometheusrules,servicemonitors,podmonitors,configmaps', '-l', 'app.kubernetes.io/part-of=extbackend', '-o', 'name']);
  t.deepEqual(got.stdout.trim().split('\n').sort(), [
    'podmonitor.monitoring.coreos.com/extbackend-agent',
    'prometheusrule.monitoring.coreos.com/extbackend',
    'servicemonitor.monitoring.coreos.com/extbackend-operator',
  ]);
  const dashboard = await kubectl(['-n', ns, 'get', 'configmap', 'extbackend-dashboard', '-o', 'jsonpath={.metadata.labels.grafana_dashboard}']);
  t.is(dashboard.stdout, '1', 'Grafana\'s sidecar finds the dashboard by its label');
});

async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

async function startServer(t: ExecutionContext, host: LabHost): Promise<{ kill(): Promise<void>; start(): Promise<void> }> {
  let child: ChildProcess | undefined;
  const start = async (): Promise<void> => {
    child = host.spawn(process.execPath, [...NODE_ARGS, SERVER, '--kind', 'http', '--host', host.ip, '--port', '8080', '--identity', host.name]);
    await waitForOutput(child, ['listening'], `server in ${host.name}`);
  };
  const kill = async (): Promise<void> => {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
  };
  t.teardown(kill);
  await start();
  return { kill, start };
}

interface Alert {
  labels: Record<string, string>;
  state: string;
}

test('a real Prometheus scrapes operator and agent, fires "no ready address" and resolves it; every queried metric exists', async (t) => {
  const { prometheus } = await ensurePrometheus();
  const ns = await testNamespace(t);
  const lab = await createLab(t);
  const node = await lab.node('mon');
  const nodeName = `node-mon-${randomBytes(3).toString('hex')}`;
  await applyYaml(`apiVersion: v1\nkind: Node\nmetadata:\n  name: ${nodeName}\n  labels: {kubernetes.io/hostname: ${nodeName}}\n`);
  t.teardown(() => kubectl(['delete', 'node', nodeName, '--ignore-not-found']).then(() => undefined));
  const hosts = [await lab.backend('m1'), await lab.backend('m2')];
  const servers = [];
  for (const h of hosts) servers.push(await startServer(t, h));

  const operatorPort = await freePort();
  await startTestOperator(t, ns, { httpAddress: `127.0.0.1:${operatorPort}` });
  const kubeconfig = path.join(path.dirname(testKubeconfig()), `agent-${randomBytes(3).toString('hex')}.kubeconfig`);
  await writeFile(kubeconfig, kubeconfigViaAddress(await readFile(testKubeconfig(), 'utf8'), lab.hostIP), { mode: 0o600 });
  t.teardown(() => rm(kubeconfig, { force: true }));
  const agent = node.spawn(process.execPath, [...NODE_ARGS, BIN, 'agent', '--kubeconfig', kubeconfig, '--node-name', nodeName, '--proxy-mode', 'nftables', '--min-sync-period', '100ms', '--sync-period', '10s', '--http-address', `${node.ip}:10266`], {
    ...process.env,
    // The test runner quiets logs; 'caches synced' is an info line.
    EXTBACKEND_LOG_LEVEL: 'info',
  });
  t.teardown(async () => {
    if (agent.exitCode !== null || agent.signalCode !== null) return;
    const exited = once(agent, 'exit');
    agent.kill('SIGTERM');
    await exited;
  });
  await waitForOutput(agent, ['caches synced'], 'the agent');

  // Scraped and evaluated every second, every `for:` cut to 0s: the alert follows the hosts
  // within a few seconds instead of the minute it waits in a real cluster.
  const prom = await startPrometheus(t, prometheus, (rulesFile) => `global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [${JSON.stringify(rulesFile)}]
scrape_configs:
- job_name: extbackend-operator
  static_configs: [{targets: ['127.0.0.1:${operatorPort}']}]
- job_name: extbackend-agent
  static_configs: [{targets: ['${node.ip}:10266'], labels: {node: ${nodeName}}}]
`, renderRules(await ruleGroups(), { forDuration: '0s' }));

  await applyYaml(`apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: db, namespace: ${ns}}
spec:
  addresses: [{ip: ${hosts[0]!.ip}}, {ip: ${hosts[1]!.ip}}]
  ports: [{name: http, port: 80, targetPort: 8080}]
  healthCheck: {type: http, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 1, successThreshold: 1}
`);
  const ready = async (): Promise<string | undefined> => {
    const r = await prom.query<{ result: { value: [number, string] }[] }>(`/api/v1/query?query=${encodeURIComponent(`extbackend_backend_ready_addresses{namespace="${ns}",backend="db",port="http"}`)}`);
    return r.result[0]?.value[1];
  };
  await waitFor('Prometheus to see both addresses ready', async () => (await ready()) === '2', { timeoutMs: 30_000, intervalMs: 250 });
  const firing = async (): Promise<Alert[]> => (await prom.query<{ alerts: Alert[] }>('/api/v1/alerts')).alerts.filter((a) => a.labels.alertname === 'ExtBackendNoReadyAddress' && a.labels.namespace === ns && a.state === 'firing');
  t.deepEqual(await firing(), [], 'no alert while the hosts answer');

  for (const s of servers) await s.kill();
  const fired = await waitFor('ExtBackendNoReadyAddress to fire', async () => ((await firing()).length ? firing() : false), { timeoutMs: 30_000, intervalMs: 250 });
  t.deepEqual(fired.map((a) => [a.labels.backend, a.labels.port, a.labels.severity]), [['db', 'http', 'critical']]);

  for (const s of servers) await s.start();
  await waitFor('ExtBackendNoReadyAddress to resolve', async () => (await firing()).length === 0, { timeoutMs: 30_000, intervalMs: 250 });
  // It resolves with the first host back; the second follows within a probe period.
  await waitFor('Prometheus to see both addresses ready again', async () => (await ready()) === '2', { timeoutMs: 30_000, intervalMs: 250 });

  // Every name the rules and the dashboard query is exported by the live operator or agent
  // (or is Prometheus' own `up`), and every query parses and runs.
  const live = new Set(['up']);
  for (const url of [`http://127.0.0.1:${operatorPort}/metrics`, `http://${node.ip}:10266/metrics`]) for (const n of exportedNames(await (await fetch(url)).text())) live.add(n);
  const queries = [...(await ruleGroups()).flatMap((g) => g.rules.map((r) => ({ where: `alert ${r.alert}`, expr: r.expr }))), ...(await dashboardQueries())];
  const missing = queries.flatMap((q) => promqlMetricNames(q.expr).filter((n) => !live.has(n)).map((n) => `${q.where}: ${n}`));
  t.deepEqual(missing, [], 'metric names no running component exports');
  for (const q of queries) await prom.query(`/api/v1/query?query=${encodeURIComponent(q.expr)}`);
  t.true(queries.length > 20, `${queries.length} queries checked`);
});
