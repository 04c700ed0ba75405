import test from 'ava';
import { Registry } from '../../src/runtime/metrics.ts';

test('our metrics and prom-client default process and Node.js metrics are on one page', async (t) => {
  const m = new Registry();
  m.counter('extbackend_reconcile_total', 'Reconciles.', ['controller', 'result']).inc({ controller: 'c', result: 'success' }, 2);
  m.histogram('extbackend_sync_seconds', 'Syncs.', [], [0.1, 1]).observe(0.5);
  const page = await m.render();
  t.regex(page, /^extbackend_reconcile_total\{controller="c",result="success"\} 2$/m);
  t.regex(page, /^extbackend_sync_seconds_bucket\{le="0.1"\} 0$/m);
  t.regex(page, /^extbackend_sync_seconds_bucket\{le="1"\} 1$/m);
  for (const name of ['process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_gc_duration_seconds', 'nodejs_heap_size_used_bytes', 'nodejs_active_handles', 'nodejs_heap_used_bytes']) {
    t.regex(page, new RegExp(`^# TYPE ${name} `, 'm'), name);
  }
  t.regex(m.contentType, /^text\/plain; version=0\.0\.4/);
});

test('callback gauges are read at scrape time, one series per registered reader', async (t) => {
  const m = new Registry();
  let depth = 1;
  m.callbackGauge('extbackend_workqueue_depth', 'Keys waiting.', () => depth, { controller: 'a' });
  m.callbackGauge('extbackend_workqueue_depth', 'Keys waiting.', () => 7, { controller: 'b' });
  depth = 3;
  const page = await m.render();
  t.regex(page, /^extbackend_workqueue_depth\{controller="a"\} 3$/m);
  t.regex(page, /^extbackend_workqueue_depth\{controller="b"\} 7$/m);
});

test('a label the metric did not declare is refused, and label values are escaped', async (t) => {
  const m = new Registry();
  const c = m.counter('extbackend_api_writes_total', 'Writes.', ['verb']);
  t.throws(() => c.inc({ verb: 'create', resource: 'x' } as never), { message: /resource/ });
  c.inc({ verb: 'a"b\\c\nd' });
  t.regex(await m.render(), /^extbackend_api_writes_total\{verb="a\\"b\\\\c\\nd"\} 1$/m);
});
