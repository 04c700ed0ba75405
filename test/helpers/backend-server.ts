// A test backend, run inside a network namespace: a TCP, UDP, HTTP, HTTPS or
// gRPC-health server that answers with its own identity. `--flap` makes HTTP alternate 200/500
// on every request. Prints "listening" on stdout once it accepts connections.
//   node backend-server.ts --kind http --host 198.18.0.2 --port 8080 --identity b1 [--flap] [--cert F --key F]
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    kind: { type: 'string', default: 'http' },
    host: { type: 'string', default: '0.0.0.0' },
    port: { type: 'string', default: '8080' },
    identity: { type: 'string', default: 'backend' },
    flap: { type: 'boolean', default: false },
    cert: { type: 'string' },
    key: { type: 'string' },
  },
});
const port = Number(values.port);
const host = values.host;
const identity = values.identity;
const ready = (): void => void process.stdout.write('listening\n');

let requests = 0;
let flap = values.flap;
// SIGUSR1 toggles flapping, so a test can start healthy and then flap without a restart.
process.on('SIGUSR1', () => {
  flap = !flap;
  requests = 0;
});
const handler: http.RequestListener = (req, res) => {
  // GET /client answers with the address the connection came from (source-IP checks).
  if (req.url === '/client') return void res.writeHead(200, { 'content-type': 'text/plain' }).end(`${req.socket.remoteAddress}\n`);
  requests++;
  const status = flap && requests % 2 === 1 ? 500 : 200;
  res.writeHead(status, { 'content-type': 'text/plain' }).end(`${identity}\n`);
};

switch (values.kind) {
  case 'tcp':
    net
      .createServer((s) => {
        s.on('error', () => undefined); // a prober that hangs up at once is not our problem
        s.end(`${identity}\n`);
      })
      .listen(port, host, ready);
    break;
  case 'udp': {
    const socket = dgram.createSocket('udp4');
    socket.on('message', (_msg, from) => socket.send(`${identity}\n`, from.port, from.address));
    socket.bind(port, host, ready);
    break;
  }
  case 'http':
    http.createServer(handler).listen(port, host, ready);
    break;
  case 'https':
    https.createServer({ cert: readFileSync(values.cert!), key: readFileSync(values.key!) }, handler).listen(port, host, ready);
    break;
  case 'grpc': {
    const grpc = await import('@grpc/grpc-js');
    const { HealthImplementation } = await import('grpc-health-check');
    const server = new grpc.Server();
    const health = new HealthImplementation({ '': 'SERVING', [identity]: 'SERVING' });
    health.addToServer(server);
    server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err) => {
      if (err) throw err;
      ready();
    });
    break;
  }
  default:
    throw new Error(`unknown --kind ${values.kind}`);
}
