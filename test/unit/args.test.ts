import test from 'ava';
import { UsageError, durationFlag, intFlag, listFlag, parseArgs, stringFlag, type FlagSpecs } from '../../src/cli/args.ts';

const specs: FlagSpecs = {
  'node-name': { type: 'string', help: '' },
  cleanup: { type: 'boolean', help: '' },
  'nodeport-addresses': { type: 'list', help: '' },
  'sync-period': { type: 'string', help: '', default: '30s' },
  workers: { type: 'string', help: '' },
};

test('flags in both spellings, booleans, lists and positionals', (t) => {
  const args = parseArgs(['up', '--node-name', 'n1', '--cleanup', '--nodeport-addresses=10.0.0.0/8, 192.168.0.0/16', 'extra'], specs);
  t.deepEqual(args.positionals, ['up', 'extra']);
  t.is(stringFlag(args, 'node-name'), 'n1');
  t.true(args.flags.cleanup);
  t.deepEqual(listFlag(args, 'nodeport-addresses'), ['10.0.0.0/8', '192.168.0.0/16']);
  t.is(durationFlag(args, 'sync-period'), 30_000, 'defaults apply');
});

test('unknown flags and missing values are usage errors', (t) => {
  t.throws(() => parseArgs(['--nodename', 'x'], specs), { instanceOf: UsageError, message: /unknown flag --nodename/ });
  t.throws(() => parseArgs(['--node-name'], specs), { instanceOf: UsageError, message: /needs a value/ });
});

test('durations and bounded integers', (t) => {
  t.is(durationFlag(parseArgs(['--sync-period=500ms'], specs), 'sync-period'), 500);
  t.is(durationFlag(parseArgs(['--sync-period=2m'], specs), 'sync-period'), 120_000);
  t.throws(() => durationFlag(parseArgs(['--sync-period=soon'], specs), 'sync-period'), { message: /duration/ });
  t.is(intFlag(parseArgs(['--workers=4'], specs), 'workers', 1, 64), 4);
  t.throws(() => intFlag(parseArgs(['--workers=0'], specs), 'workers', 1, 64), { message: /1\.\.64/ });
});

test('booleans take kube-style values and negations; values after -- are positionals', (t) => {
  const on = { ...specs, 'leader-elect': { type: 'boolean' as const, help: '', default: 'true' } };
  t.true(parseArgs([], on).flags['leader-elect'], 'the default applies');
  t.false(parseArgs(['--leader-elect=false'], on).flags['leader-elect']);
  t.false(parseArgs(['--no-leader-elect'], on).flags['leader-elect']);
  t.true(parseArgs(['--leader-elect=true'], on).flags['leader-elect']);
  t.deepEqual(parseArgs(['--', '--leader-elect=false'], on).positionals, ['--leader-elect=false']);
});

test('strict parsing: a value on an unknown flag, a short flag and a negated string flag are all refused by name', (t) => {
  t.throws(() => parseArgs(['--nodename=x'], specs), { instanceOf: UsageError, message: 'unknown flag --nodename' });
  t.throws(() => parseArgs(['-n', 'x'], specs), { instanceOf: UsageError, message: 'unknown flag -n' });
  t.throws(() => parseArgs(['--no-node-name'], specs), { instanceOf: UsageError, message: /unknown flag --no-node-name \(only boolean flags/ });
  t.throws(() => parseArgs(['--node-name', '-x'], specs), { instanceOf: UsageError, message: /--node-name needs a value \(write --node-name=VALUE/ });
  t.is(stringFlag(parseArgs(['--node-name=-x'], specs), 'node-name'), '-x');
});
