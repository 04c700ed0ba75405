// Primary/backup failover and drain in IPVS mode, in the qemu guest: the scenario the
// iptables and nftables modes pass on the host (a drained real server is kept at weight 0).
import test from 'ava';
import { failoverScenario, FAILOVER_STEPS } from '../helpers/failover-scenario.ts';

test.serial(`ipvs agent: ${FAILOVER_STEPS}`, (t) => failoverScenario(t, 'ipvs'));
