// A plain TCP relay: `node tcp-relay.ts LISTEN_HOST:PORT TARGET_HOST:PORT`. The IPVS
// guest runs one so that its network namespaces reach the API server at the same
// port as the host's kubeconfig names.
import net from 'node:net';

const [listen = '', target = ''] = process.argv.slice(2);
const split = (hp: string): [string, number] => {
  const i = hp.lastIndexOf(':');
  return [hp.slice(0, i), Number(hp.slice(i + 1))];
};
const [lhost, lport] = split(listen);
const [thost, tport] = split(target);
if (!lhost || !lport || !thost || !tport) {
  process.stderr.write('usage: tcp-relay.ts LISTEN_HOST:PORT TARGET_HOST:PORT\n');
  process.exit(2);
}
net
  .createServer((inbound) => {
    const outbound = net.connect(tport, thost);
    inbound.pipe(outbound).pipe(inbound);
    const close = (): void => {
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('error', close);
    outbound.on('error', close);
    inbound.on('close', close);
    outbound.on('close', close);
  })
  .listen(lport, lhost, () => process.stdout.write(`relaying ${listen} -> ${target}\n`));
