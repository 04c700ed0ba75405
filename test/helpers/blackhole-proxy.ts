// A loopback TCP proxy in front of the API server that can black-hole its traffic: the
// connections stay open but nothing gets through in either direction, as in a network
// partition (no RST, no FIN), until heal(). For the partitioned-leader fault test.
import net from 'node:net';
import type { ExecutionContext } from 'ava';

export interface BlackholeProxy {
  port: number;
  /** From now on every byte is dropped, on open connections and new ones. */
  blackhole(): void;
  /** Traffic flows again; connections that lost bytes are closed (their streams are corrupt). */
  heal(): void;
}

export async function startBlackholeProxy(t: ExecutionContext, targetPort: number): Promise<BlackholeProxy> {
  let holed = false;
  const sockets = new Set<{ inbound: net.Socket; outbound: net.Socket; lost: boolean }>();
  const server = net.createServer((inbound) => {
    const outbound = net.connect(targetPort, '127.0.0.1');
    const pair = { inbound, outbound, lost: false };
    sockets.add(pair);
    const relay = (from: net.Socket, to: net.Socket): void => {
      from.on('data', (chunk) => {
        if (holed) pair.lost = true;
        else to.write(chunk);
      });
    };
    relay(inbound, outbound);
    relay(outbound, inbound);
    const close = (): void => {
      inbound.destroy();
      outbound.destroy();
      sockets.delete(pair);
    };
    for (const s of [inbound, outbound]) {
      s.on('error', close);
      s.on('close', close);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const { inbound, outbound } of sockets) {
      inbound.destroy();
      outbound.destroy();
    }
    server.close();
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    blackhole: () => {
      holed = true;
    },
    heal: () => {
      holed = false;
      for (const pair of sockets) {
        if (!pair.lost) continue;
        pair.inbound.destroy();
        pair.outbound.destroy();
        sockets.delete(pair);
      }
    },
  };
}
