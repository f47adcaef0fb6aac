// Stands in for pino in the bundled CLI (package.json "build"): the CLI never logs, and the RPC
// client only asks pino for a silent logger, while loading pino took a third of a command's start-up.
const noop = () => undefined;

export interface SilentLogger {
  level: string;
  trace: typeof noop;
  debug: typeof noop;
  info: typeof noop;
  warn: typeof noop;
  error: typeof noop;
  fatal: typeof noop;
  silent: typeof noop;
  child(): SilentLogger;
  isLevelEnabled(): boolean;
}

const logger: SilentLogger = {
  level: "silent",
  trace: noop,
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  fatal: noop,
  silent: noop,
  child: () => logger,
  isLevelEnabled: () => false,
};

export default function pino(): SilentLogger {
  return logger;
}
