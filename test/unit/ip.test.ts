import test from 'ava';
import { canonicalIP, cidrContains, forbiddenAddressReason, parseCidr, parseIP } from '../../src/net/ip.ts';
import { buildAddressPolicy, refuseAddress } from '../../src/operator/address-policy.ts';

test('canonical IPv6 text compresses the longest zero run', (t) => {
  t.is(canonicalIP('2001:0DB8:0:0:0:0:0:1'), '2001:db8::1');
  t.is(canonicalIP('2001:db8:0:1:0:0:0:1'), '2001:db8:0:1::1');
  t.is(canonicalIP('::ffff:192.0.2.1'), '::ffff:c000:201');
  t.is(canonicalIP('192.0.2.1'), '192.0.2.1');
  t.is(canonicalIP('nope'), undefined);
});

test('CIDR containment is per family', (t) => {
  const c = parseCidr('10.96.0.0/12')!;
  t.true(cidrContains(c, parseIP('10.100.3.4')!));
  t.false(cidrContains(c, parseIP('10.112.0.1')!));
  t.false(cidrContains(c, parseIP('::a60:1')!));
  t.true(cidrContains(parseCidr('fd00::/8')!, parseIP('fd12::1')!));
});

test('special addresses are always refused, IPv4-mapped included', (t) => {
  t.regex(forbiddenAddressReason('127.0.0.53')!, /loopback/);
  t.regex(forbiddenAddressReason('::ffff:127.0.0.1')!, /loopback/);
  t.regex(forbiddenAddressReason('169.254.169.254')!, /link-local/);
  t.regex(forbiddenAddressReason('fe80::1')!, /link-local/);
  t.regex(forbiddenAddressReason('0.0.0.0')!, /unspecified/);
  t.regex(forbiddenAddressReason('239.1.1.1')!, /multicast/);
  t.is(forbiddenAddressReason('192.0.2.1'), undefined);
});

test('cluster networks are refused unless the cluster-wide switch allows them', (t) => {
  const facts = { serviceCIDRs: ['10.96.0.0/16'], podCIDRs: ['10.244.1.0/24'], nodeIPs: ['192.168.1.5'], apiServerIPs: ['192.168.1.1'] };
  const strict = buildAddressPolicy(facts, false);
  t.regex(refuseAddress('10.96.0.10', strict)!, /service CIDR 10\.96\.0\.0\/16/);
  t.regex(refuseAddress('10.244.1.7', strict)!, /pod CIDR/);
  t.regex(refuseAddress('192.168.1.5', strict)!, /node address/);
  t.regex(refuseAddress('192.168.1.1', strict)!, /API server/);
  t.is(refuseAddress('192.168.1.6', strict), undefined);
  const lax = buildAddressPolicy(facts, true);
  t.is(refuseAddress('10.96.0.10', lax), undefined);
  t.regex(refuseAddress('127.0.0.1', lax)!, /loopback/, 'the switch never allows loopback');
});
