import test from 'ava';
import { pinnedVersions, versionLdflags } from '../../src/devcluster/build.ts';

test('pinned versions are read from the require block', (t) => {
  const goMod = 'module x\n\nrequire (\n\tgo.etcd.io/etcd/server/v3 v3.6.8\n\tk8s.io/kubernetes v1.36.3\n)\n';
  t.deepEqual(pinnedVersions(goMod), { kubernetes: 'v1.36.3', etcd: 'v3.6.8' });
  t.throws(() => pinnedVersions('module x\n'), { message: /does not require k8s.io\/kubernetes/ });
});

test('version ldflags set both version packages like hack/lib/version.sh', (t) => {
  const flags = versionLdflags('v1.36.3', 'abc123', '2026-01-01T00:00:00Z');
  t.true(flags.includes('-X k8s.io/component-base/version.gitVersion=v1.36.3'));
  t.true(flags.includes('-X k8s.io/client-go/pkg/version.gitMinor=36'));
  t.true(flags.includes('-X k8s.io/component-base/version.gitCommit=abc123'));
  t.throws(() => versionLdflags('main', 'x', 'y'));
});
