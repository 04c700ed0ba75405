// ava for the tests that run inside the IPVS guest (test/guest/run-suite.ts boots it).
export default {
  files: ['test/guest/**/*.test.ts'],
  extensions: ['ts'],
  timeout: '15m',
  workerThreads: false,
  concurrency: 1,
  nodeArguments: ['--disable-warning=ExperimentalWarning'],
};
