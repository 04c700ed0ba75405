// The agent's index of EndpointSlices by Service, fed by informer events.
import test from 'ava';
import type { SliceInput } from '../../src/agent/model.ts';
import { SliceIndex } from '../../src/agent/slice-index.ts';

const slice = (name: string, service: string | undefined, namespace = 'ns'): SliceInput => ({
  metadata: { name, namespace, ...(service ? { labels: { 'kubernetes.io/service-name': service } } : {}) },
});

test('slices are found by their Service; the same array while nothing of that Service changed', (t) => {
  const index = new SliceIndex();
  const a1 = slice('a-1', 'a');
  const a2 = slice('a-2', 'a');
  const b1 = slice('b-1', 'b');
  for (const s of [a1, a2, b1, slice('orphan', undefined), slice('a-1', 'a', 'other')]) index.update('add', s);
  const first = index.slicesOf('ns', 'a');
  t.deepEqual(first, [a1, a2]);
  t.is(index.slicesOf('ns', 'a'), first, 'unchanged: the same array');
  t.deepEqual(index.slicesOf('other', 'a').map((s) => s.metadata.namespace), ['other']);
  t.deepEqual(index.slicesOf('ns', 'missing'), []);

  // A change to b leaves a's array alone.
  const b1v2 = slice('b-1', 'b');
  index.update('update', b1v2, b1);
  t.is(index.slicesOf('ns', 'a'), first);
  t.deepEqual(index.slicesOf('ns', 'b'), [b1v2]);

  // A slice relabelled to another Service moves; a deleted one goes.
  const moved = slice('a-2', 'b');
  index.update('update', moved, a2);
  t.deepEqual(index.slicesOf('ns', 'a'), [a1]);
  t.deepEqual(index.slicesOf('ns', 'b'), [b1v2, moved]);
  index.update('delete', a1);
  t.deepEqual(index.slicesOf('ns', 'a'), []);
});
