import { pathToFileURL } from 'node:url';

/**
 * Runs a fake as a process of its own (the end-to-end tests, the demo and the benchmarks start them inside
 * network namespaces): when `moduleUrl` is the entry script, start it, print one JSON line announcing it
 * (`{"url":…}` and whatever else `start` returns), and close it on SIGTERM/SIGINT with exit 0. A bad
 * argument or a failed start exits 2 with the message on stderr.
 */
export function runStandalone(
  name: string,
  moduleUrl: string,
  start: (argv: string[]) => Promise<{ announce: Record<string, unknown>; close: () => Promise<void> }>,
): void {
  if (!process.argv[1] || moduleUrl !== pathToFileURL(process.argv[1]).href) return;
  start(process.argv.slice(2)).then(
    ({ announce, close }) => {
      process.stdout.write(`${JSON.stringify(announce)}\n`);
      let closing = false;
      const shutdown = () => {
        if (closing) return;
        closing = true;
        close().then(
          () => process.exit(0),
          () => process.exit(1),
        );
      };
      process.on('SIGTERM', shutdown);
      process.on('SIGINT', shutdown);
    },
    (err: unknown) => {
      process.stderr.write(`${name}: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(2);
    },
  );
}
