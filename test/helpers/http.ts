// A real HTTP server on 127.0.0.1 (ephemeral port) serving fixed bodies, counting requests.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface TestServer {
  url: string;
  requests: string[];
  close(): Promise<void>;
}

export type Handler = (req: IncomingMessage, res: ServerResponse, n: number) => void;

export async function serve(routes: Record<string, Buffer | Handler>): Promise<TestServer> {
  const requests: string[] = [];
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    requests.push(path);
    const route = routes[path];
    if (route === undefined) {
      res.writeHead(404).end('not found');
    } else if (typeof route === 'function') {
      route(req, res, requests.filter((p) => p === path).length);
    } else {
      res.writeHead(200, { 'content-length': route.length }).end(route);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
