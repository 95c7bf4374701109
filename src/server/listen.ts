import type { Server } from 'node:net';

/** Listen on host:port (every address without a host); resolves once listening, rejects with the server's error (EADDRINUSE, EACCES, …). */
export function listenServer(server: Server, host: string | undefined, port: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, ...(host !== undefined ? { host } : {}) }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
