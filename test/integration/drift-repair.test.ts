// Partial drift in a real kernel, in a network namespace of the test's own: a full sync
// compares every rule of every chain of ours (iptables) and the rules of every chain and
// the elements of the maps (nftables) with what it renders, and rewrites what differs.
// A chain that lost one rule still carries its first, hash-carrying one, and a flushed
// map still exists: both used to look right.
import test from 'ava';
import { IptablesApplier, type ToolRunner } from '../../src/agent/iptables/apply.ts';
import { renderIptables, svcChain } from '../../src/agent/iptables/render.ts';
import { buildProxyModel, ModelCache, type ProxyModel, type ServiceInput, type SliceInput } from '../../src/agent/model.ts';
import { ELEMENT_CHECK_BUDGET, NftablesApplier, type NftRunner } from '../../src/agent/nftables/apply.ts';
import { chainPrefix, renderNftables, shardTable } from '../../src/agent/nftables/render.ts';
import { runTool, systemCommand } from '../../src/net/system-command.ts';
import { createBackendHost } from '../helpers/netns.ts';

/**
 * Every rule shape the renderers make, in both families: weighted spread, ClientIP
 * affinity, NodePort and external IPs with externalTrafficPolicy Local, UDP and SCTP,
 * a Service without endpoints (reject rules).
 */
function model(family: 4 | 6): ProxyModel {
  const v = (n: number): string => (family === 4 ? `198.18.7.${n}` : `fd00:7::${n}`);
  const vip = (n: number): string => (family === 4 ? `10.96.7.${n}` : `fd00:96::${n}`);
  const svc = (name: string, n: number, spec: Record<string, unknown>, protocol = 'TCP'): ServiceInput =>
    ({ metadata: { name, namespace: 'drift', resourceVersion: name }, spec: { clusterIP: vip(n), clusterIPs: [vip(n)], ipFamilies: [family === 4 ? 'IPv4' : 'IPv6'], ports: [{ name: 'p', port: 80, protocol, ...(spec.type === 'NodePort' ? { nodePort: 30000 + n } : {}) }], ...spec } as ServiceInput['spec'] }) as ServiceInput;
  const slice = (name: string, hosts: [number, number][], protocol = 'TCP'): SliceInput =>
    ({
      metadata: { name, namespace: 'drift', labels: { 'kubernetes.io/service-name': name }, resourceVersion: name, annotations: { 'extbackend.io/endpoint-topology': JSON.stringify(Object.fromEntries(hosts.map(([h, w]) => [v(h), { weight: w }]))) } },
      addressType: family === 4 ? 'IPv4' : 'IPv6',
      ports: [{ name: 'p', port: 8080, protocol }],
      endpoints: hosts.map(([h]) => ({ addresses: [v(h)], conditions: { ready: true }, nodeName: h === 1 ? 'n' : 'other' })),
    }) as SliceInput;
  const services = [
    svc('spread', 1, { type: 'NodePort' }),
    svc('sticky', 2, { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } }),
    svc('local', 3, { type: 'NodePort', externalTrafficPolicy: 'Local', externalIPs: [family === 4 ? '192.0.2.3' : '2001:db8::3'] }),
    svc('udp', 4, {}, 'UDP'),
    svc('sctp', 5, {}, 'SCTP'),
    svc('empty', 6, { type: 'NodePort' }),
  ];
  const slices = [slice('spread', [[1, 1], [2, 1], [3, 2]]), slice('sticky', [[1, 1], [2, 1]]), slice('local', [[1, 1], [2, 1]]), slice('udp', [[1, 1], [2, 1]], 'UDP'), slice('sctp', [[3, 1]], 'SCTP')];
  return buildProxyModel(services, slices, { name: 'n', labels: {}, nodePortAddresses: [] }, { externalIPAllowed: () => true }, new ModelCache());
}

test('iptables: a full sync finds every rule shape right in both families, and repairs a deleted, an edited and an added rule', async (t) => {
  const host = await createBackendHost(t);
  const run: ToolRunner = (command, args, input) => runTool('ip', ['netns', 'exec', host.name, systemCommand(command), ...args], input);
  for (const family of [4, 6] as const) {
    const m = model(family);
    t.true(m.ports.length >= 5, `the model has its Services (${m.ports.length})`);
    const chains = renderIptables(m, family, { nodePortCIDRs: [] });
    const applier = new IptablesApplier(family, run);
    t.like(await applier.apply(chains, true), { drifted: 0 });
    // Nothing changed: iptables-save prints our rules in its own words, and they still compare equal.
    t.like(await applier.apply(chains, true), { written: 0, drifted: 0 }, `IPv${family}: every chain verified as right`);
    const saved = async (): Promise<string> => run(`ip${family === 6 ? '6' : ''}tables-save`, ['-t', 'nat']);
    const spread = svcChain(m.ports.find((p) => p.service === 'spread')!);
    const before = (await saved()).split('\n').filter((l) => l.startsWith(`-A ${spread} `));
    t.is(before.length, 4, 'mark and three DNAT rules');
    const iptables = `ip${family === 6 ? '6' : ''}tables`;

    // The repro of issue 14: one DNAT rule deleted, the hash-carrying first rule kept.
    await run(iptables, ['-t', 'nat', '-D', spread, '3']);
    t.like(await applier.apply(chains, false), { written: 0 }, 'a partial sync trusts what it wrote');
    t.like(await applier.apply(chains, true), { written: 1, drifted: 1 });
    t.deepEqual((await saved()).split('\n').filter((l) => l.startsWith(`-A ${spread} `)), before, 'the chain holds its rules again');
    t.like(await applier.apply(chains, true), { written: 0, drifted: 0 }, 'and is right on the next full sync');

    // The same number of rules, one of them pointing elsewhere; then one rule too many.
    const dnat = before[3]!.slice(`-A ${spread} `.length);
    await run(iptables, ['-t', 'nat', '-R', spread, '4', ...dnat.replace(family === 4 ? '198.18.7.3' : 'fd00:7::3', family === 4 ? '198.18.7.9' : 'fd00:7::9').split(' ').filter(Boolean)]);
    t.like(await applier.apply(chains, true), { written: 1, drifted: 1 }, 'an edited rule is found');
    await run(iptables, ['-t', 'nat', '-A', spread, '-j', 'RETURN']);
    t.like(await applier.apply(chains, true), { written: 1, drifted: 1 }, 'an added rule is found');
    t.deepEqual((await saved()).split('\n').filter((l) => l.startsWith(`-A ${spread} `)), before);
  }
});

test('nftables: a full sync refills a flushed map and rewrites a chain that lost a rule', async (t) => {
  const host = await createBackendHost(t);
  const nft: NftRunner = (args, input) => runTool('ip', ['netns', 'exec', host.name, systemCommand('nft'), ...args], input);
  for (const family of [4, 6] as const) {
    const nf = family === 4 ? 'ip' : 'ip6';
    const m = model(family);
    const state = renderNftables(m, family, { nodePortCIDRs: [] });
    const applier = new NftablesApplier(nf, nft);
    await applier.apply(state, true);
    t.like(await applier.apply(state, true), { elements: 0, drifted: 0 }, `IPv${family}: elements and chains verified as right`);
    const spread = m.ports.find((p) => p.service === 'spread')!;
    const shard = shardTable(spread);
    const slots = async (): Promise<string> => nft(['list', 'map', nf, shard, 'service-endpoints-tcp']);
    const full = await slots();
    t.regex(full, /\. 80 \. 3 :/, 'four slots (weights 1:1:2)');

    // The other repro of issue 14: `nft flush map ... service-endpoints-tcp`.
    await nft(['flush', 'map', nf, shard, 'service-endpoints-tcp']);
    t.like(await applier.apply(state, false), { elements: 0 }, 'a partial sync trusts what it wrote');
    const repaired = await applier.apply(state, true);
    t.true(repaired.drifted >= 1 && repaired.elements >= 4, JSON.stringify(repaired));
    t.is(await slots(), full, 'the map holds its elements again');
    // One element changed in place.
    const key = /(\S+ \. 80 \. 0) : (\S+ \. 8080)/.exec(full)!;
    await nft(['-f', '-'], `delete element ${nf} ${shard} service-endpoints-tcp { ${key[1]} }\nadd element ${nf} ${shard} service-endpoints-tcp { ${key[1]} : ${family === 4 ? '198.18.7.9' : 'fd00:7::9'} . 8080 }\n`);
    t.like(await applier.apply(state, true), { drifted: 1 }, 'an edited element is found');
    t.is(await slots(), full);

    // A versioned (content-named) chain that lost a rule: the affinity Service's chain.
    const sticky = m.ports.find((p) => p.service === 'sticky')!;
    const stickyShard = shardTable(sticky);
    const chain = new RegExp(`chain (${chainPrefix('svc', sticky)}\\S+) \\{`).exec(await nft(['list', 'table', nf, stickyShard]))![1]!;
    const listing = await nft(['-a', 'list', 'chain', nf, stickyShard, chain]);
    const handles = [...listing.matchAll(/# handle (\d+)/g)].map((x) => x[1]!);
    await nft(['delete', 'rule', nf, stickyShard, chain, 'handle', handles.at(-1)!]);
    t.like(await applier.apply(state, true), { drifted: 1 }, 'the chain is found short of a rule');
    t.is((await nft(['list', 'chain', nf, stickyShard, chain])).replace(/packets \d+ bytes \d+/g, ''), listing.replace(/ # handle \d+/g, '').replace(/packets \d+ bytes \d+/g, ''));
    t.like(await applier.apply(state, true), { drifted: 0 });

    // A fixed chain (the shard's Service lookup) flushed: every Service of the shard would miss.
    const lookup = await nft(['list', 'chain', nf, shard, 'services']);
    await nft(['flush', 'chain', nf, shard, 'services']);
    t.like(await applier.apply(state, true), { written: 1, drifted: 1 });
    t.is((await nft(['list', 'chain', nf, shard, 'services'])).replace(/packets \d+ bytes \d+/g, ''), lookup.replace(/packets \d+ bytes \d+/g, ''));
    t.like(await applier.apply(state, true), { written: 0, drifted: 0 }, 'nothing rewritten once right');
  }
  t.true(ELEMENT_CHECK_BUDGET > 100, 'this small node has every table checked on each full sync');
});
