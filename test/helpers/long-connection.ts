// A test client, run inside a network namespace: one keep-alive HTTP connection that
// asks every --interval-ms and never reconnects. Prints "connected <identity>" once the
// first answer arrives, then on SIGUSR2 (or a broken connection) JSON: answers by
// identity, with the time of the last one, and why it ended.
//   node long-connection.ts --url http://10.96.0.10:80/ [--interval-ms 200]
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { url: { type: 'string' }, 'interval-ms': { type: 'string', default: '200' } } });
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const answers: Record<string, number> = {};
let lastAnswerAt = 0;
let stopped = false;
let ended: string | undefined;
let socket: unknown;
process.on('SIGUSR2', () => void (stopped = true));

function ask(): Promise<void> {
  return new Promise((resolve) => {
    const req = http.get(values.url!, { agent, timeout: 2000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => {
        // Another socket than the first one means the connection was cut and made anew.
        if (socket === undefined) socket = req.socket;
        else if (req.socket !== socket) ended = 'reconnected';
        const id = body.trim();
        if (!lastAnswerAt) process.stdout.write(`connected ${id}\n`);
        answers[id] = (answers[id] ?? 0) + 1;
        lastAnswerAt = Date.now();
        resolve();
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err: NodeJS.ErrnoException) => {
      ended = err.code ?? err.message;
      resolve();
    });
  });
}

while (!stopped && !ended) {
  await ask();
  await new Promise((r) => setTimeout(r, Number(values['interval-ms'])));
}
agent.destroy();
process.stdout.write(JSON.stringify({ answers, lastAnswerAt, ended: ended ?? 'stopped' }) + '\n');
