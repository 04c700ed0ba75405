// One winston logger for every subcommand: JSON lines by default (what log
// collectors want), readable text when stderr is a terminal.
import winston from 'winston';

export type Logger = winston.Logger;

const LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LEVELS)[number];

export interface LogOptions {
  level?: string;
  format?: 'json' | 'text';
}

export function parseLogLevel(value: string | undefined): LogLevel {
  const level = (value ?? 'info').toLowerCase();
  if (!(LEVELS as readonly string[]).includes(level)) {
    throw new Error(`log level "${value}" is not one of ${LEVELS.join(', ')}`);
  }
  return level as LogLevel;
}

export function createLogger(options: LogOptions = {}): Logger {
  const level = parseLogLevel(options.level ?? process.env.EXTBACKEND_LOG_LEVEL);
  const format = options.format ?? (process.stderr.isTTY ? 'text' : 'json');
  const text = winston.format.printf(({ level: lvl, message, timestamp, component, ...rest }) => {
    const fields = Object.entries(rest)
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join(' ');
    const scope = typeof component === 'string' ? ` [${component}]` : '';
    return `${String(timestamp)} ${lvl}${scope} ${String(message)}${fields ? ' ' + fields : ''}`;
  });
  return winston.createLogger({
    level,
    format: winston.format.combine(
      winston.format.timestamp(),
      winston.format.errors({ stack: true }),
      format === 'json'
        ? winston.format.json()
        : process.stderr.isTTY
          ? winston.format.combine(winston.format.colorize(), text)
          : text,
    ),
    // Everything to stderr: stdout stays free for command output (kubeconfig paths, tables).
    transports: [new winston.transports.Console({ stderrLevels: [...LEVELS] })],
  });
}

let root: Logger | undefined;

/** The process-wide logger; the CLI configures it once from flags. */
export function logger(component?: string): Logger {
  root ??= createLogger();
  return component ? root.child({ component }) : root;
}

export function configureLogger(options: LogOptions): Logger {
  root = createLogger(options);
  return root;
}
