// Checks of an ExternalBackend spec that the CRD's schema and CEL rules cannot express;
// each problem makes the operator set Accepted False (InvalidSpec) with its message.
import { canonicalIP } from '../net/ip.ts';
import { portName, type ExternalBackend } from './external-backend.ts';

/** Problems with the spec that the CRD schema cannot express. */
export function semanticProblems(eb: ExternalBackend): string[] {
  const problems: string[] = [];
  const names = new Set(eb.spec.ports.map(portName).filter(Boolean));
  eb.spec.addresses.forEach((a, i) => {
    for (const name of Object.keys(a.targetPorts ?? {})) {
      if (!names.has(name)) problems.push(`addresses[${i}].targetPorts names port "${name}", which is not in spec.ports`);
    }
  });
  const seen = new Map<string, number>();
  eb.spec.addresses.forEach((a, i) => {
    const key = a.ip ? (canonicalIP(a.ip) ?? a.ip) : (a.hostname ?? '').replace(/\.$/, '');
    const first = seen.get(key);
    if (first !== undefined) problems.push(`addresses[${i}] repeats addresses[${first}] (${key})`);
    else seen.set(key, i);
  });
  return problems;
}
