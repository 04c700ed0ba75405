// UDP client for data-plane tests, run inside a namespace: sends `--count` datagrams
// to HOST:PORT from one fixed source port (so they share one conntrack entry), each
// waiting up to --timeout-ms for the answer, and prints JSON {answers, timeouts}.
//   node udp-client.ts --host 10.96.0.10 --port 53 --source-port 40000 --count 3
import dgram from 'node:dgram';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    host: { type: 'string' },
    port: { type: 'string', default: '53' },
    'source-port': { type: 'string', default: '40000' },
    count: { type: 'string', default: '1' },
    'timeout-ms': { type: 'string', default: '500' },
  },
});
const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true });
await new Promise<void>((resolve) => socket.bind(Number(values['source-port']), resolve));
const answers: Record<string, number> = {};
let timeouts = 0;
for (let i = 0; i < Number(values.count); i++) {
  const answer = await new Promise<string | undefined>((resolve) => {
    const timer = setTimeout(() => {
      socket.off('message', onMessage);
      resolve(undefined);
    }, Number(values['timeout-ms']));
    const onMessage = (msg: Buffer): void => {
      clearTimeout(timer);
      socket.off('message', onMessage);
      resolve(msg.toString().trim());
    };
    socket.on('message', onMessage);
    socket.send(`ping ${i}`, Number(values.port), values.host);
  });
  if (answer === undefined) timeouts++;
  else answers[answer] = (answers[answer] ?? 0) + 1;
}
socket.close();
process.stdout.write(`${JSON.stringify({ answers, timeouts })}\n`);
