import type { FastifyReply } from 'fastify';

/**
 * Responses shaped like the real metadata service: `text/plain` for every document (JSON included) and a
 * small `text/html` page for errors whose body says nothing but the status. Reasons go to the logs only.
 */
const REASONS: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  429: 'Too Many Requests',
  431: 'Request Header Fields Too Large',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/** The reason phrase of a status code this server sends (RFC 9110 §15), `Error` for any other. */
export function reasonPhrase(status: number): string {
  return REASONS[status] ?? 'Error';
}

const pages = new Map<number, string>();

/** The error page real IMDS sends, for a status code. */
export function errorPage(status: number): string {
  let page = pages.get(status);
  if (page === undefined) {
    const title = `${status} - ${reasonPhrase(status)}`;
    page =
      '<?xml version="1.0" encoding="iso-8859-1"?>\n' +
      '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n' +
      '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n' +
      '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n' +
      ` <head>\n  <title>${title}</title>\n </head>\n <body>\n  <h1>${title}</h1>\n </body>\n</html>\n`;
    pages.set(status, page);
  }
  return page;
}

/** Send a terse error page. */
export function sendError(reply: FastifyReply, status: number): FastifyReply {
  return reply.code(status).header('content-type', 'text/html').send(errorPage(status));
}

/** Send a document as real IMDS does: text/plain, whatever the content. */
export function sendText(reply: FastifyReply, body: string): FastifyReply {
  return reply.code(200).header('content-type', 'text/plain').send(body);
}

/** Whole seconds, `Z`: the form botocore parses first and Go accepts as RFC 3339. */
export function isoSeconds(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The `handler` label of kiam_metadata_request_duration_seconds for this request. */
    kiamHandler: string;
  }
}

/**
 * Remembers keys it has seen, up to a bound (oldest forgotten first): "log at info the first time,
 * at debug afterwards" without unbounded memory.
 */
export class OnceSet {
  private readonly seen = new Set<string>();
  constructor(private readonly max = 10_000) {}

  /** True the first time a key is offered (or after it was forgotten). */
  first(key: string): boolean {
    if (this.seen.has(key)) return false;
    if (this.seen.size >= this.max) {
      const oldest = this.seen.values().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    this.seen.add(key);
    return true;
  }
}
