import test from 'ava';
import { decidePort, recheckAfterMs, type FailoverEndpoint, type FailoverSettings, type PortHistory, type Role } from '../../src/operator/failover.ts';

const NOW = Date.parse('2026-01-01T00:10:00Z');
const settings = (over: Partial<FailoverSettings> = {}): FailoverSettings => ({ minReady: 1, failbackDelayMs: 0, nowMs: NOW, ...over });

/** "p0 up", "p1 down", "p0 up drain": one endpoint each, named by position. */
function hosts(...specs: string[]): FailoverEndpoint[] {
  return specs.map((s, i) => {
    const [p, health, drain] = s.split(' ');
    return { ip: `h${i}`, priority: Number(p!.slice(1)), healthy: health === 'up', drain: drain === 'drain' };
  });
}
const roles = (m: Map<string, Role>): string => [...m.values()].join(' ');

const table: { name: string; hosts: FailoverEndpoint[]; settings?: Partial<FailoverSettings>; history?: PortHistory; active: number | undefined; roles: string; kind?: 'failover' | 'failback' }[] = [
  { name: 'everything goes to priority 0 while one of its hosts is healthy', hosts: hosts('p0 up', 'p0 down', 'p1 up', 'p1 up'), active: 0, roles: 'active down standby standby' },
  { name: 'all primaries down: the backups serve', hosts: hosts('p0 down', 'p0 down', 'p1 up', 'p1 up'), history: { activePriority: 0 }, active: 1, roles: 'down down active active', kind: 'failover' },
  { name: 'the lowest healthy group wins, not the next one', hosts: hosts('p0 down', 'p5 up', 'p2 up'), active: 2, roles: 'down standby active' },
  { name: 'a group with fewer than minReady healthy hosts counts as down', hosts: hosts('p0 up', 'p0 down', 'p1 up', 'p1 up'), settings: { minReady: 2 }, active: 1, roles: 'standby down active active' },
  { name: 'no group reaches minReady: the lowest with any healthy host still serves', hosts: hosts('p0 down', 'p0 down', 'p1 up', 'p1 down'), settings: { minReady: 2 }, active: 1, roles: 'down down active down' },
  { name: 'nothing healthy: no active group, every host down', hosts: hosts('p0 down', 'p1 down'), history: { activePriority: 1 }, active: undefined, roles: 'down down', kind: 'failover' },
  { name: 'a drained host gets no new connections and does not count for its group', hosts: hosts('p0 up drain', 'p1 up'), active: 1, roles: 'draining active' },
  { name: 'a drained host beside a healthy one: the other serves its group', hosts: hosts('p0 up drain', 'p0 up', 'p1 up'), active: 0, roles: 'draining active standby' },
  { name: 'every host drained: no active group, all are the last resort', hosts: hosts('p0 up drain', 'p1 up drain'), active: undefined, roles: 'draining draining' },
  { name: 'a drained host that fails its probes is down', hosts: hosts('p0 down drain', 'p0 up'), active: 0, roles: 'down active' },
  { name: 'failback without a delay is immediate', hosts: hosts('p0 up', 'p1 up'), history: { activePriority: 1 }, active: 0, roles: 'active standby', kind: 'failback' },
  { name: 'failback waits out the delay', hosts: hosts('p0 up', 'p1 up'), settings: { failbackDelayMs: 30_000 }, history: { activePriority: 1 }, active: 1, roles: 'standby active' },
  { name: 'the current group dies during the delay: the better one serves at once', hosts: hosts('p0 up', 'p1 down'), settings: { failbackDelayMs: 30_000 }, history: { activePriority: 1, failback: { priority: 0, healthySinceMs: NOW - 1000 } }, active: 0, roles: 'active down', kind: 'failover' },
  { name: 'the delay ran out since the recorded time: failback', hosts: hosts('p0 up', 'p1 up'), settings: { failbackDelayMs: 30_000 }, history: { activePriority: 1, failback: { priority: 0, healthySinceMs: NOW - 30_000 } }, active: 0, roles: 'active standby', kind: 'failback' },
  { name: 'a worse group never takes over from a healthy better one', hosts: hosts('p0 up', 'p1 up'), history: { activePriority: 0 }, active: 0, roles: 'active standby' },
];

for (const c of table) {
  test(c.name, (t) => {
    const d = decidePort(c.hosts, settings(c.settings), c.history);
    t.is(d.active, c.active);
    t.is(roles(d.roles), c.roles);
    t.is(d.change?.kind, c.kind);
  });
}

test('a pending failback records since when the better group is healthy and when traffic returns', (t) => {
  const d = decidePort(hosts('p0 up', 'p1 up'), settings({ failbackDelayMs: 30_000 }), { activePriority: 1 });
  t.deepEqual(d.failback, { priority: 0, healthySinceMs: NOW, atMs: NOW + 30_000 });
  t.is(recheckAfterMs([d], NOW), 30_000);
  // Ten seconds later (the status kept the time): twenty to go.
  const later = decidePort(hosts('p0 up', 'p1 up'), settings({ failbackDelayMs: 30_000, nowMs: NOW + 10_000 }), { activePriority: 1, failback: d.failback });
  t.is(later.active, 1);
  t.is(recheckAfterMs([later], NOW + 10_000), 20_000);
});

test('a flap the reconciler never saw (down and up between two looks) restarts the delay from the probes\' time', (t) => {
  const flapped = hosts('p0 up', 'p1 up').map((e) => (e.priority === 0 ? { ...e, healthySinceMs: NOW - 2_000 } : e));
  const d = decidePort(flapped, settings({ failbackDelayMs: 30_000 }), { activePriority: 1, failback: { priority: 0, healthySinceMs: NOW - 25_000 } });
  t.is(d.active, 1, 'five seconds from failback by the status, but the primary was down two seconds ago');
  t.is(d.failback?.healthySinceMs, NOW - 2_000);
});

test('the better group going down again drops the pending failback; its next recovery waits the whole delay', (t) => {
  const down = decidePort(hosts('p0 down', 'p1 up'), settings({ failbackDelayMs: 30_000 }), { activePriority: 1, failback: { priority: 0, healthySinceMs: NOW - 25_000 } });
  t.is(down.failback, undefined);
  t.is(down.change, undefined);
  const up = decidePort(hosts('p0 up', 'p1 up'), settings({ failbackDelayMs: 30_000, nowMs: NOW + 1_000 }), { activePriority: 1 });
  t.is(up.failback?.atMs, NOW + 31_000);
});

test('with minReady 2 the group is healthy since its second host turned healthy', (t) => {
  const eps = hosts('p0 up', 'p0 up', 'p1 up', 'p1 up').map((e, i) => ({ ...e, healthySinceMs: [NOW - 50_000, NOW - 4_000, NOW - 90_000, NOW - 90_000][i] }));
  const d = decidePort(eps, settings({ minReady: 2, failbackDelayMs: 30_000 }), { activePriority: 1, failback: { priority: 0, healthySinceMs: NOW - 60_000 } });
  t.is(d.failback?.healthySinceMs, NOW - 4_000);
});

test('invariants over every combination of three hosts in two groups', (t) => {
  // 3 hosts x (priority 0/1) x (up/down) x (drain or not), with and without history.
  const states = ['p0 up', 'p0 down', 'p1 up', 'p1 down', 'p0 up drain', 'p1 up drain'];
  let cases = 0;
  for (const a of states) for (const b of states) for (const c of states) for (const prev of [undefined, 0, 1]) {
    const eps = hosts(a, b, c);
    const d = decidePort(eps, settings(), prev === undefined ? {} : { activePriority: prev });
    cases++;
    const usable = eps.filter((e) => e.healthy && !e.drain);
    if (!usable.length) {
      t.is(d.active, undefined);
      continue;
    }
    // Without a delay, the lowest usable priority serves and only its usable hosts are active.
    t.is(d.active, Math.min(...usable.map((e) => e.priority)));
    for (const e of eps) t.is(d.roles.get(e.ip) === 'active', e.healthy && !e.drain && e.priority === d.active);
  }
  t.is(cases, 6 ** 3 * 3);
});
