// Run inside a node's network namespace by bench/agent.ts: N sequential TCP connects
// to HOST:PORT, each a new connection (so its first packet walks the proxy's rules).
// Prints {"p50Us":..,"p99Us":..,"failures":..}.
import net from 'node:net';

const [host = '', portText = '80', countText = '300'] = process.argv.slice(2);
const times: number[] = [];
let failures = 0;
for (let i = 0; i < Number(countText); i++) {
  const started = process.hrtime.bigint();
  await new Promise<void>((resolve) => {
    const socket = net.connect({ host, port: Number(portText) });
    socket.setTimeout(2000, () => socket.destroy(new Error('timeout')));
    socket.once('connect', () => {
      times.push(Number(process.hrtime.bigint() - started) / 1000);
      socket.destroy();
      resolve();
    });
    socket.once('error', () => {
      failures++;
      resolve();
    });
  });
}
times.sort((a, b) => a - b);
const at = (q: number): number => times[Math.min(times.length - 1, Math.floor(q * times.length))] ?? NaN;
process.stdout.write(`${JSON.stringify({ p50Us: Math.round(at(0.5)), p99Us: Math.round(at(0.99)), failures })}\n`);
