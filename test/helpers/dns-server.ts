// A tiny authoritative DNS server on loopback for tests: answers A and AAAA from a
// map the test changes at will, with a short TTL, so re-resolution can be observed.
import dgram from 'node:dgram';
import net from 'node:net';
import { parseIP } from '../../src/net/ip.ts';

export interface TestDnsServer {
  address: string; // "127.0.0.1:port", for --dns-server
  records: Map<string, string[]>;
  queries: number;
  close(): Promise<void>;
}

function readName(msg: Buffer, offset: number): { name: string; end: number } {
  const labels: string[] = [];
  let i = offset;
  while (msg[i]! !== 0) {
    const len = msg[i]!;
    labels.push(msg.subarray(i + 1, i + 1 + len).toString('ascii'));
    i += len + 1;
  }
  return { name: labels.join('.').toLowerCase(), end: i + 1 };
}

function rdata(ip: string): Buffer {
  const parsed = parseIP(ip)!;
  const bytes = parsed.family === 4 ? 4 : 16;
  const out = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) out[i] = Number((parsed.value >> BigInt((bytes - 1 - i) * 8)) & 0xffn);
  return out;
}

export async function startTestDnsServer(ttlSeconds = 1): Promise<TestDnsServer> {
  const socket = dgram.createSocket('udp4');
  const records = new Map<string, string[]>();
  const server: TestDnsServer = { address: '', records, queries: 0, close: () => new Promise((r) => socket.close(() => r())) };
  socket.on('message', (msg, rinfo) => {
    server.queries++;
    const { name, end } = readName(msg, 12);
    const qtype = msg.readUInt16BE(end);
    const question = msg.subarray(12, end + 4);
    const known = records.get(name);
    const answers = (known ?? []).filter((ip) => (qtype === 1 ? net.isIPv4(ip) : qtype === 28 ? net.isIPv6(ip) : false));
    const header = Buffer.alloc(12);
    header.writeUInt16BE(msg.readUInt16BE(0), 0);
    header.writeUInt16BE(known ? 0x8580 : 0x8583, 2); // response, authoritative; NXDOMAIN when unknown
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(answers.length, 6);
    const rrs = answers.map((ip) => {
      const data = rdata(ip);
      const rr = Buffer.alloc(12);
      rr.writeUInt16BE(0xc00c, 0); // pointer to the question name
      rr.writeUInt16BE(qtype, 2);
      rr.writeUInt16BE(1, 4);
      rr.writeUInt32BE(ttlSeconds, 6);
      rr.writeUInt16BE(data.length, 10);
      return Buffer.concat([rr, data]);
    });
    socket.send(Buffer.concat([header, question, ...rrs]), rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  server.address = `127.0.0.1:${socket.address().port}`;
  return server;
}
