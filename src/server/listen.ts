import type http from 'node:http';

/** Listen on host:port; resolves once listening, rejects with the server's error (EADDRINUSE, EACCES, …). */
export function listenServer(server: http.Server, host: string, port: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
