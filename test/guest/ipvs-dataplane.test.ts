// IPVS mode with real traffic, in the qemu guest (this machine's kernel has no IP_VS):
// the same scenario the iptables and nftables modes pass on the host.
import test from 'ava';
import { agentScenario, SCENARIO_STEPS } from '../helpers/agent-scenario.ts';

test.serial(`ipvs agent: ${SCENARIO_STEPS}`, (t) => agentScenario(t, 'ipvs'));
