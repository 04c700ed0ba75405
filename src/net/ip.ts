// IP address and CIDR arithmetic on bigints: enough for address policy checks and
// for the agent's rule rendering, without a dependency.
import net from 'node:net';

export type Family = 4 | 6;

export interface ParsedIP {
  family: Family;
  value: bigint;
}

export interface Cidr {
  family: Family;
  base: bigint;
  bits: number;
  text: string;
}

export function parseIP(text: string): ParsedIP | undefined {
  const family = net.isIP(text);
  if (family === 4) {
    const value = text.split('.').reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
    return { family: 4, value };
  }
  if (family === 6) {
    if (text.includes('%')) return undefined;
    const double = text.indexOf('::');
    const head = double === -1 ? text : text.slice(0, double);
    const tail = double === -1 ? '' : text.slice(double + 2);
    const parseGroups = (s: string): number[] => {
      if (!s) return [];
      const groups: number[] = [];
      for (const g of s.split(':')) {
        if (g.includes('.')) {
          // Embedded IPv4 (::ffff:1.2.3.4): two 16-bit groups.
          const v4 = parseIP(g);
          if (!v4) return [];
          groups.push(Number(v4.value >> 16n), Number(v4.value & 0xffffn));
        } else {
          groups.push(parseInt(g, 16));
        }
      }
      return groups;
    };
    const h = parseGroups(head);
    const t = parseGroups(tail);
    const groups = double !== -1 ? [...h, ...Array<number>(8 - h.length - t.length).fill(0), ...t] : h;
    const value = groups.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n);
    return { family: 6, value };
  }
  return undefined;
}

export function parseCidr(text: string): Cidr | undefined {
  const [addr = '', bitsText] = text.split('/');
  const ip = parseIP(addr);
  if (!ip) return undefined;
  const max = ip.family === 4 ? 32 : 128;
  const bits = bitsText === undefined ? max : Number(bitsText);
  if (!Number.isInteger(bits) || bits < 0 || bits > max) return undefined;
  const mask = ((1n << BigInt(bits)) - 1n) << BigInt(max - bits);
  return { family: ip.family, base: ip.value & mask, bits, text };
}

export function cidrContains(cidr: Cidr, ip: ParsedIP): boolean {
  if (cidr.family !== ip.family) return false;
  const max = cidr.family === 4 ? 32 : 128;
  return ip.value >> BigInt(max - cidr.bits) === cidr.base >> BigInt(max - cidr.bits);
}

/** Canonical text form (IPv6 lower-case and compressed), so equal IPs compare equal. */
export function canonicalIP(text: string): string | undefined {
  const ip = parseIP(text);
  if (!ip) return undefined;
  if (ip.family === 4) return text.split('.').map(Number).join('.');
  const groups = Array.from({ length: 8 }, (_, i) => Number((ip.value >> BigInt((7 - i) * 16)) & 0xffffn));
  // Longest run of zero groups (length >= 2) becomes "::".
  let best = { start: -1, len: 0 };
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.len) best = { start: i, len: j - i };
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best.len < 2) return hex.join(':');
  return `${hex.slice(0, best.start).join(':')}::${hex.slice(best.start + best.len).join(':')}`;
}

const SPECIAL: { cidr: Cidr; why: string }[] = [
  ['0.0.0.0/32', 'the unspecified address'],
  ['::/128', 'the unspecified address'],
  ['127.0.0.0/8', 'a loopback address'],
  ['::1/128', 'a loopback address'],
  ['169.254.0.0/16', 'a link-local address (cloud metadata services live here)'],
  ['fe80::/10', 'a link-local address'],
  ['224.0.0.0/4', 'a multicast address'],
  ['ff00::/8', 'a multicast address'],
  ['fd00:ec2::254/128', 'a cloud metadata address'],
].map(([c, why]) => ({ cidr: parseCidr(c!)!, why: why! }));

/**
 * Why an address must never be an endpoint or a probe target (the API server refuses
 * such endpoints, and probing them would reach the node itself or metadata services),
 * or undefined when it is an ordinary address. IPv4-mapped IPv6 is judged as IPv4.
 */
export function forbiddenAddressReason(text: string): string | undefined {
  const ip = parseIP(text);
  if (!ip) return 'not a valid IP address';
  const v4mapped = ip.family === 6 && ip.value >> 32n === 0xffffn ? { family: 4 as const, value: ip.value & 0xffffffffn } : undefined;
  if (v4mapped) return forbiddenAddressReason(canonicalIPFromValue(v4mapped));
  return SPECIAL.find((s) => cidrContains(s.cidr, ip))?.why;
}

function canonicalIPFromValue(ip: ParsedIP): string {
  if (ip.family === 4) return [24n, 16n, 8n, 0n].map((s) => Number((ip.value >> s) & 0xffn)).join('.');
  return canonicalIP(Array.from({ length: 8 }, (_, i) => ((ip.value >> BigInt((7 - i) * 16)) & 0xffffn).toString(16)).join(':'))!;
}
