// The nftables applier's element diff: by group identity, with keys two Services share.
import test from 'ava';
import { MapContent } from '../../src/agent/nftables/map-content.ts';
import type { ElementGroup } from '../../src/agent/nftables/render.ts';

const sorted = (c: { gone: string[]; added: readonly (readonly [string, string])[] }) => ({ gone: [...c.gone].sort(), added: [...c.added].sort() });

test('unchanged groups cost nothing; a replaced group deletes and adds only its own elements', (t) => {
  const content = new MapContent();
  const a: ElementGroup = [['10.96.0.1 . 80 . 0', '198.18.0.1 . 8080'], ['10.96.0.1 . 80 . 1', '198.18.0.2 . 8080']];
  const b: ElementGroup = [['10.96.0.2 . 80 . 0', '198.18.0.3 . 8080']];
  t.deepEqual(sorted(content.update([a, b])), { gone: [], added: [...a, ...b].sort() });
  t.deepEqual(content.update([a, b]), { gone: [], added: [] });
  // The same elements in a new array (a port rendered again) are re-sent: identity, not content, is compared.
  const a2: ElementGroup = [['10.96.0.1 . 80 . 0', '198.18.0.9 . 8080']];
  t.deepEqual(sorted(content.update([a2, b])), { gone: ['10.96.0.1 . 80 . 0', '10.96.0.1 . 80 . 1'], added: [['10.96.0.1 . 80 . 0', '198.18.0.9 . 8080']] });
  t.deepEqual(sorted(content.update([])), { gone: ['10.96.0.1 . 80 . 0', '10.96.0.2 . 80 . 0'], added: [] });
});

test('a key two groups carry is written once; when its owner goes, the other group takes it over', (t) => {
  const content = new MapContent();
  const first: ElementGroup = [['203.0.113.5 . tcp . 80', 'goto svc-a']];
  const second: ElementGroup = [['203.0.113.5 . tcp . 80', 'goto svc-b'], ['10.96.0.2 . tcp . 80', 'goto svc-b']];
  t.deepEqual(sorted(content.update([first, second])), { gone: [], added: [['10.96.0.2 . tcp . 80', 'goto svc-b'], ['203.0.113.5 . tcp . 80', 'goto svc-a']] });
  t.deepEqual(content.update([second]), { gone: ['203.0.113.5 . tcp . 80'], added: [['203.0.113.5 . tcp . 80', 'goto svc-b']] });
  t.deepEqual(sorted(content.update([])), { gone: ['10.96.0.2 . tcp . 80', '203.0.113.5 . tcp . 80'], added: [] });
  // Both owners of a shared key leave in one update: the key goes, nothing stale is added back.
  const x: ElementGroup = [['k', '1']];
  const y: ElementGroup = [['k', '2']];
  content.update([x, y]);
  t.deepEqual(content.update([]), { gone: ['k'], added: [] });
});

test('an element a re-rendered port keeps (same key, same value) is left in the kernel', (t) => {
  const content = new MapContent();
  content.update([[['10.96.0.1 . tcp . 80', 'goto slots-ip-tcp-3-masq-abc'], ['k0', 'a']]]);
  t.deepEqual(content.update([[['10.96.0.1 . tcp . 80', 'goto slots-ip-tcp-3-masq-abc'], ['k0', 'b']]]), { gone: ['k0'], added: [['k0', 'b']] });
});

test('content matches the kernel\'s elements only when every key has its value and nothing else is there', (t) => {
  const content = new MapContent();
  const a: ElementGroup = [['10.96.0.1 . 80 . 0', '198.18.0.1 . 8080'], ['10.96.0.1 . 80 . 1', '198.18.0.2 . 8080']];
  content.update([a]);
  t.is(content.size, 2);
  t.true(content.matches(new Map(a)));
  t.false(content.matches(new Map()), 'a flushed map');
  t.false(content.matches(new Map([a[0]!])), 'one element gone');
  t.false(content.matches(new Map([a[0]!, ['10.96.0.1 . 80 . 1', '198.18.0.9 . 8080']])), 'one value changed');
  t.false(content.matches(new Map([...a, ['10.96.0.9 . 80 . 0', '198.18.0.1 . 8080']])), 'one element more');
});
