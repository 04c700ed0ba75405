// `extbackend`: one executable, several subcommands.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../devcluster/build.ts';
import { configureLogger, logger } from '../log.ts';
import { UsageError, flagHelp, parseArgs, stringFlag, type FlagSpecs, type ParsedArgs } from './args.ts';
import { agentCommand, agentFlags } from './agent-command.ts';
import { clusterCommand, clusterFlags } from './cluster-command.ts';
import { demoCommand } from './demo-command.ts';
import { operatorCommand, operatorFlags } from './operator-command.ts';

const globalFlags: FlagSpecs = {
  kubeconfig: { type: 'string', help: 'kubeconfig file; else $KUBECONFIG, else in-cluster config' },
  'log-level': { type: 'string', help: 'error, warn, info or debug (env EXTBACKEND_LOG_LEVEL)' },
  'log-format': { type: 'string', help: 'json or text (env EXTBACKEND_LOG_FORMAT; default: text on a terminal, else json)' },
  help: { type: 'boolean', help: 'show help' },
};

interface Command {
  summary: string;
  flags: FlagSpecs;
  run(args: ParsedArgs): Promise<void>;
}

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

const commands: Record<string, Command> = {
  operator: { summary: 'run the ExternalBackend operator', flags: operatorFlags, run: operatorCommand },
  agent: { summary: 'run the node agent (a small kube-proxy for our Services)', flags: agentFlags, run: agentCommand },
  demo: { summary: 'run the operator; without a configured cluster, on a local control plane with the samples (what `npm start` runs)', flags: operatorFlags, run: demoCommand },
  cluster: { summary: 'local control plane and images: build | image | up | run | down | status', flags: clusterFlags, run: clusterCommand },
  version: {
    summary: 'print the version',
    flags: {},
    run: () => {
      process.stdout.write(`extbackend ${packageVersion()}\n`);
      return Promise.resolve();
    },
  },
};

function usage(): string {
  const list = Object.entries(commands)
    .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
    .join('\n');
  return `usage: extbackend <command> [flags]\n\ncommands:\n${list}\n\nglobal flags:\n${flagHelp(globalFlags)}\n`;
}

async function main(argv: string[]): Promise<void> {
  const name = argv[0];
  const command = name ? commands[name] : undefined;
  if (!command) {
    process.stderr.write(usage());
    process.exitCode = name && !['-h', '--help', 'help'].includes(name) ? 2 : 0;
    return;
  }
  const specs = { ...globalFlags, ...command.flags };
  const args = parseArgs(argv.slice(1), specs);
  if (args.flags.help) {
    process.stdout.write(`extbackend ${name}: ${command.summary}\n\nflags:\n${flagHelp(specs)}\n`);
    return;
  }
  const format = stringFlag(args, 'log-format') ?? process.env.EXTBACKEND_LOG_FORMAT;
  if (format !== undefined && format !== 'json' && format !== 'text') throw new UsageError(`--log-format must be json or text, got "${format}"`);
  configureLogger({ level: stringFlag(args, 'log-level'), format });
  await command.run(args);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof UsageError) {
    process.stderr.write(`extbackend: ${err.message}\n\n${usage()}`);
    process.exitCode = 2;
    return;
  }
  logger().error(err instanceof Error ? err.message : String(err));
  process.exitCode = 1;
});
