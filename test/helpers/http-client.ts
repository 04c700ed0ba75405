// A test client, run inside a network namespace: makes HTTP requests (one new
// connection each) and prints JSON: how many answers came from each identity,
// failures with their errors, and how many SYNs this network namespace retransmitted
// meanwhile (a refused connection that was first dropped shows there, however fast the
// machine); with --timeline, every request's start time (ms since the epoch) and outcome
// too. SIGUSR2 ends the run early (and prints).
//   node http-client.ts --url http://10.96.0.10:80/ --count 200 [--interval-ms 0] [--timeout-ms 2000] [--duration-ms N] [--timeline]
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    count: { type: 'string', default: '100' },
    'interval-ms': { type: 'string', default: '0' },
    'timeout-ms': { type: 'string', default: '2000' },
    'duration-ms': { type: 'string' },
    timeline: { type: 'boolean', default: false },
  },
});
const url = values.url!;
const interval = Number(values['interval-ms']);
const timeout = Number(values['timeout-ms']);
const until = values['duration-ms'] ? Date.now() + Number(values['duration-ms']) : undefined;
const count = until ? Infinity : Number(values.count);

const answers: Record<string, number> = {};
const errors: Record<string, number> = {};
let failures = 0;
let done = 0;
/** [start ms since epoch, identity or error code] per request, with --timeline. */
const timeline: [number, string][] = [];
let stopped = false;
process.on('SIGUSR2', () => void (stopped = true));

/** The kernel's count of retransmitted SYNs in this process's network namespace (TcpExt TCPSynRetrans). */
function synRetransmits(): number {
  const [names, values] = readFileSync('/proc/self/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:')).map((l) => l.split(/\s+/));
  return Number(values![names!.indexOf('TCPSynRetrans')]);
}
const synRetransmitsBefore = synRetransmits();

function once(): Promise<void> {
  const at = Date.now();
  let settled = false;
  return new Promise((resolve) => {
    // The client closes first (the server keeps the connection open), so TIME_WAIT
    // stays on the client's side and a re-used 4-tuple never meets a server in TIME_WAIT.
    const req = http.get(url, { agent: false, timeout, headers: { connection: 'keep-alive' } }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => {
        const id = body.trim();
        answers[id] = (answers[id] ?? 0) + 1;
        if (values.timeline) timeline.push([at, id]);
        settled = true;
        req.destroy();
        resolve();
      });
    });
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      failures++;
      errors[why] = (errors[why] ?? 0) + 1;
      if (values.timeline) timeline.push([at, `error:${why}`]);
      resolve();
    };
    req.on('timeout', () => {
      req.destroy();
      fail('timeout');
    });
    req.on('error', (err: NodeJS.ErrnoException) => fail(err.code ?? err.message));
  });
}

while (done < count && (!until || Date.now() < until) && !stopped) {
  await once();
  done++;
  if (interval) await new Promise((r) => setTimeout(r, interval));
}
process.stdout.write(JSON.stringify({ requests: done, answers, failures, errors, synRetransmits: synRetransmits() - synRetransmitsBefore, ...(values.timeline ? { timeline } : {}) }) + '\n');
