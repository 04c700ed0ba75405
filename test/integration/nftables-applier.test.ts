// The nftables applier against the real kernel, in a network namespace of the test's
// own: sharded tables, restarts that rewrite no chain, one-Service changes that touch
// only their shard's slot elements, leftovers of other layouts removed, foreign tables
// untouched.
import test from 'ava';
import { buildProxyModel, ModelCache, type ProxyModel, type ServiceInput, type SliceInput } from '../../src/agent/model.ts';
import { NftablesApplier, type NftRunner } from '../../src/agent/nftables/apply.ts';
import { chainPrefix, renderNftables, shardTable, TABLE } from '../../src/agent/nftables/render.ts';
import { runTool, systemCommand } from '../../src/net/system-command.ts';
import { createBackendHost } from '../helpers/netns.ts';

const SERVICES = 40;

/** SERVICES Services x 3 endpoints (Service 1 with ClientIP affinity: a chain of its own); `moved` gives Service 0 other endpoints. */
function inputs(moved: boolean, count = SERVICES): { services: ServiceInput[]; slices: SliceInput[] } {
  const services: ServiceInput[] = [];
  const slices: SliceInput[] = [];
  for (let i = 0; i < count; i++) {
    const name = `svc-${i}`;
    const shift = moved && i === 0 ? 100 : 0;
    const affinity = i === 1 ? { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 30 } } } : {};
    services.push({ metadata: { name, namespace: 'applier', resourceVersion: `s${i}` } as ServiceInput['metadata'], spec: { clusterIP: `10.96.1.${i + 1}`, ports: [{ name: 'http', port: 80, protocol: 'TCP' }], ...affinity } });
    slices.push({
      metadata: { name, namespace: 'applier', labels: { 'kubernetes.io/service-name': name }, resourceVersion: `e${i}-${shift}` } as SliceInput['metadata'],
      addressType: 'IPv4',
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
      endpoints: [1, 2, 3].map((e) => ({ addresses: [`198.18.${i + shift}.${e}`], conditions: { ready: true } })),
    });
  }
  return { services, slices };
}

const node = { name: 'n', labels: {}, nodePortAddresses: [] };
const model = (moved: boolean, cache: ModelCache, count?: number): ProxyModel => {
  const { services, slices } = inputs(moved, count);
  return buildProxyModel(services, slices, node, { externalIPAllowed: () => false }, cache);
};
const render = (m: ProxyModel) => renderNftables(m, 4, { nodePortCIDRs: [] });

test('nftables applier: shards, restarts, one-Service changes and leftovers in a real kernel', async (t) => {
  const host = await createBackendHost(t);
  const nft: NftRunner = (args, input) => runTool('ip', ['netns', 'exec', host.name, systemCommand('nft'), ...args], input);
  const tables = async (): Promise<string[]> => [...(await nft(['list', 'tables', 'ip'])).matchAll(/^table ip (\S+)$/gm)].map((m) => m[1]!).sort();
  const handles = async (table: string): Promise<string> => (await nft(['-a', 'list', 'table', 'ip', table])).replace(/counter packets \d+ bytes \d+/g, 'counter');
  const cache = new ModelCache();
  const m0 = model(false, cache);
  const expectedShards = [...new Set(m0.ports.map((p) => shardTable(p)))].sort();
  t.true(expectedShards.length > 8, 'forty Services spread over most shards');

  // A foreign table (like kube-proxy's) must survive everything below.
  await nft(['-f', '-'], 'add table ip foreign\nadd chain ip foreign c { type nat hook prerouting priority dstnat; }\nadd rule ip foreign c counter\n');
  const foreign = await nft(['list', 'table', 'ip', 'foreign']);

  const applier = new NftablesApplier('ip', nft);
  const first = await applier.apply(render(m0), true);
  // The main table's 8 fixed chains; per shard 3 fixed and 1 slot chain (every Service has 3 endpoints);
  // the affinity Service's chain and its 3 endpoint chains.
  t.is(first.written, 8 + 4 * expectedShards.length + 4, 'fixed and slot chains, and the one affinity Service\'s chains');
  t.is(first.elements, SERVICES + 3 * (SERVICES - 1), 'a verdict element per Service and three slot elements per Service without affinity');
  t.deepEqual(await tables(), [TABLE, ...expectedShards, 'foreign'].sort());
  const svc0 = m0.ports.find((p) => p.service === 'svc-0')!;
  const svc1 = m0.ports.find((p) => p.service === 'svc-1')!;
  const shard0 = shardTable(svc0);
  const before = new Map(await Promise.all(expectedShards.map(async (s) => [s, await handles(s)] as const)));
  t.regex(before.get(shard0)!, /10\.96\.1\.1 \. 80 \. 2 : 198\.18\.0\.3 \. 8080/);
  t.regex(before.get(shardTable(svc1))!, new RegExp(`chain ${chainPrefix('svc', svc1)}[0-9a-f]{12} \\{`));

  // A restarted agent reads names only and rewrites no Service or slot chain (counters and
  // handles stay; only the few fixed chains are rewritten); not knowing the elements, it refills the maps.
  const restarted = new NftablesApplier('ip', nft);
  const restartedCache = new ModelCache();
  const again = await restarted.apply(render(model(false, restartedCache)), true);
  t.deepEqual(again.names.filter((n) => /^(svc|ext|sep|slots)-/.test(n)), [], 'no Service or slot chain rewritten');
  t.is(again.elements, first.elements, 'maps refilled');
  for (const s of expectedShards) t.is((await handles(s)).replace(/ # handle \d+/g, ''), before.get(s)!.replace(/ # handle \d+/g, ''), `${s} holds the same rules and elements`);
  const chainHandles = (text: string): string[] => [...text.matchAll(/chain (\S+) \{ # handle (\d+)/g)].map((m) => `${m[1]}#${m[2]}`);
  for (const s of expectedShards) t.deepEqual(chainHandles(await handles(s)), chainHandles(before.get(s)!), `${s}: the same chains, not recreated`);
  // A periodic full sync of the same agent finds the chains and elements it wrote as it wrote them: nothing to write.
  const periodic = await restarted.apply(render(model(false, restartedCache)), true);
  t.like(periodic, { written: 0, elements: 0, drifted: 0 });
  t.deepEqual(periodic.names.filter((n) => /^(svc|ext|sep|slots)-/.test(n)), []);

  // One Service changes: three slot elements in its shard, no chain, every other shard untouched.
  const settled = new Map(await Promise.all(expectedShards.map(async (s) => [s, await handles(s)] as const)));
  const changed = await restarted.apply(render(model(true, restartedCache)), false);
  t.like(changed, { written: 0, deleted: 0, elements: 6 });
  for (const s of expectedShards.filter((x) => x !== shard0)) t.is(await handles(s), settled.get(s)!, `${s} untouched`);
  const after = await handles(shard0);
  t.regex(after, /198\.18\.100\.1 \. 8080/);
  t.notRegex(after, /198\.18\.0\.1 \. 8080/);

  // Leftovers of another layout: a shard beyond SHARDS, a Service chain and a map in the main table.
  await nft(['-f', '-'], `add table ip ${TABLE}-svc99\nadd chain ip ${TABLE} svc-0123456789ab-0123456789ab\nadd map ip ${TABLE} service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }\n`);
  await restarted.apply(render(model(true, restartedCache)), true);
  t.deepEqual(await tables(), [TABLE, ...expectedShards, 'foreign'].sort());
  const main = await nft(['list', 'table', 'ip', TABLE]);
  t.notRegex(main, /svc-0123456789ab|map service-ips/);

  // No Services: only the main table stays; cleanup removes it too.
  await restarted.apply(render(model(false, restartedCache, 0)), false);
  t.deepEqual(await tables(), [TABLE, 'foreign']);
  t.is(await restarted.cleanup(), 1);
  t.deepEqual(await tables(), ['foreign']);
  t.is(await nft(['list', 'table', 'ip', 'foreign']), foreign);
});

test('nftables cleanup: a table gone meanwhile is nothing to do; any other failure is reported, not taken for "nothing there"', async (t) => {
  const host = await createBackendHost(t);
  const nft: NftRunner = (args, input) => runTool('ip', ['netns', 'exec', host.name, systemCommand('nft'), ...args], input);
  await new NftablesApplier('ip', nft).apply(render(model(false, new ModelCache(), 3)), true);
  const ours = [...(await nft(['list', 'tables', 'ip'])).matchAll(/^table ip (\S+)$/gm)].map((m) => m[1]!);
  t.true(ours.length >= 2);
  // Without CAP_NET_ADMIN (as a pod without it would run): the kernel refuses, and cleanup says so.
  const unprivileged: NftRunner = (args, input) => runTool('ip', ['netns', 'exec', host.name, systemCommand('setpriv'), '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', systemCommand('nft'), ...args], input);
  await t.throwsAsync(new NftablesApplier('ip', unprivileged).cleanup(), { message: /Operation not permitted/ });
  // Another process removes a table between our listing and our delete: that one is simply gone.
  const racing: NftRunner = async (args, input) => {
    if (args[0] === 'delete' && args[3] === ours[0]) await nft(['delete', 'table', 'ip', ours[0]!]);
    return nft(args, input);
  };
  t.is(await new NftablesApplier('ip', racing).cleanup(), ours.length - 1);
  t.deepEqual([...(await nft(['list', 'tables', 'ip'])).matchAll(/^table ip (\S+)$/gm)], []);
});
