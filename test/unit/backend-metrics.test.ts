import test from 'ava';
import { backendSamples, type Sample } from '../../src/operator/backend-metrics.ts';
import type { ExternalBackend } from '../../src/api/external-backend.ts';
import { BACKEND_LABEL } from '../../src/api/labels.ts';

const backend = (name: string, ports: { name?: string; port: number }[], addresses: { address: string; ready: boolean }[] = []): ExternalBackend => ({
  apiVersion: 'extbackend.io/v1alpha1',
  kind: 'ExternalBackend',
  metadata: { name, namespace: 'shop' },
  spec: { addresses: [], ports },
  status: { addresses },
});
const slice = (owner: string, ports: string[], endpoints: [string, boolean][]) => ({
  metadata: { name: `${owner}-x`, namespace: 'shop', labels: { [BACKEND_LABEL]: owner } },
  ports: ports.map((name) => ({ name })),
  endpoints: endpoints.map(([ip, ready]) => ({ addresses: [ip], conditions: { ready } })),
});

test('ready and total addresses per backend port follow the slices, a port whose hosts differ in health included', (t) => {
  const web = backend('web', [{ name: 'http', port: 80 }, { name: 'admin', port: 9000 }], [
    { address: '10.0.0.1', ready: true },
    { address: 'db.example', ready: false },
  ]);
  // 10.0.0.2 is healthy on http but not on admin, so the operator split it into two slices.
  const slices = [slice('web', ['http', 'admin'], [['10.0.0.1', true]]), slice('web', ['http'], [['10.0.0.2', true]]), slice('web', ['admin'], [['10.0.0.2', false]])];
  const s = backendSamples([web], slices);
  const byPort = (list: Sample[]): Record<string, number> => Object.fromEntries(list.map((x) => [x.labels.port ?? '', x.value]));
  t.deepEqual(byPort(s.addresses), { http: 2, admin: 2 });
  t.deepEqual(byPort(s.readyAddresses), { http: 2, admin: 1 });
  t.deepEqual(s.addressReady.map((x) => [x.labels.address, x.value]), [['10.0.0.1', 1], ['db.example', 0]]);
});

test('a backend without slices still has a 0 per port (unnamed ports by number), and other backends\' slices do not count', (t) => {
  const s = backendSamples([backend('db', [{ port: 5432 }])], [slice('web', [''], [['10.0.0.1', true]])]);
  t.deepEqual(s.readyAddresses, [{ labels: { namespace: 'shop', backend: 'db', port: '5432' }, value: 0 }]);
  t.deepEqual(s.addresses, [{ labels: { namespace: 'shop', backend: 'db', port: '5432' }, value: 0 }]);
});
