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
