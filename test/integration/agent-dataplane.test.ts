// The node agent in iptables and nftables modes, with real traffic (the scenario is
// shared with IPVS mode, which runs in the qemu guest: test/guest).
import test from 'ava';
import { agentScenario, SCENARIO_STEPS } from '../helpers/agent-scenario.ts';

test.serial(`iptables agent: ${SCENARIO_STEPS}`, (t) => agentScenario(t, 'iptables'));
test.serial(`nftables agent: ${SCENARIO_STEPS}`, (t) => agentScenario(t, 'nftables'));
