// Primary/backup failover and drain with real traffic through the agent in iptables and
// nftables modes, and through the real kube-proxy (IPVS runs the same scenario in the
// qemu guest: test/guest).
import test from 'ava';
import { failoverScenario, FAILOVER_STEPS } from '../helpers/failover-scenario.ts';

for (const mode of ['iptables', 'nftables'] as const) test.serial(`${mode} agent: ${FAILOVER_STEPS}`, (t) => failoverScenario(t, mode));
// Standard slice conditions only: kube-proxy fails over and drains the same way, with proxy: kube-proxy.
test.serial(`kube-proxy (iptables) with proxy: kube-proxy: ${FAILOVER_STEPS}`, (t) => failoverScenario(t, 'iptables', 'kube-proxy'));
