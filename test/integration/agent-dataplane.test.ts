// The node agent in iptables and nftables modes, with real traffic (the scenario is
// shared with IPVS mode, which runs in the qemu guest: test/guest).
import test from 'ava';
import { agentScenario, agentScenarioIPv6, SCENARIO_STEPS } from '../helpers/agent-scenario.ts';

test.serial(`iptables agent: ${SCENARIO_STEPS}`, (t) => agentScenario(t, 'iptables'));
test.serial(`nftables agent: ${SCENARIO_STEPS}`, (t) => agentScenario(t, 'nftables'));
for (const mode of ['iptables', 'nftables'] as const) {
  test.serial(`${mode} agent over IPv6: dual-stack Service, weighted spread, masquerade, NodePort from outside, reject, cleanup`, (t) => agentScenarioIPv6(t, mode));
}
