// Resolves on the first SIGINT or SIGTERM, so long-running commands can shut down
// in order (stop work, release the lease, remove temp dirs) instead of dying mid-write.
export function untilSignal(signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM']): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const handler = (sig: NodeJS.Signals): void => {
      for (const s of signals) process.off(s, handler);
      resolve(sig);
    };
    for (const s of signals) process.on(s, handler);
  });
}
