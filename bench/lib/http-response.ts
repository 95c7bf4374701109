/**
 * An incremental HTTP/1.1 response parser for the load generator: status line, headers, a body framed by
 * Content-Length (the only framing the metadata server and the baseline use). Feed it whatever the socket
 * delivers — partial heads, partial bodies, several pipelined responses in one chunk — and it calls back once per
 * complete response. Chunked bodies are refused (a clear ProtocolError), not guessed at.
 */
const HEAD_END = Buffer.from('\r\n\r\n');
const MAX_HEAD = 16 * 1024;
const CONTENT_LENGTH = /\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*(?=\r\n|$)/i;
const CHUNKED = /\r\ntransfer-encoding[ \t]*:[^\r]*chunked/i;
const CONN_CLOSE = /\r\nconnection[ \t]*:[ \t]*close[ \t]*(?=\r\n|$)/i;

export class ProtocolError extends Error {}

export interface Response {
  status: number;
  /** Body length in bytes. */
  length: number;
  /** The server said `Connection: close`. */
  close: boolean;
  /** The head (status line and headers, latin1, without the blank line); only when keepBody is set. */
  head?: string;
  /** The body; only when keepBody is set. */
  body?: Buffer;
}

export class ResponseParser {
  #pending: Buffer | undefined;
  /** Body bytes still to skip for the response whose head has been parsed. */
  #bodyLeft = -1;
  #current: Response | undefined;
  #bodyParts: Buffer[] = [];

  constructor(private readonly keepBody = false) {}

  /** True when no response is half-read. */
  get idle(): boolean {
    return this.#bodyLeft < 0 && !this.#pending;
  }

  /** Feeds bytes; calls onResponse for each response completed by them. Throws ProtocolError on malformed input. */
  push(chunk: Buffer, onResponse: (r: Response) => void): void {
    const buf = this.#pending ? Buffer.concat([this.#pending, chunk]) : chunk;
    this.#pending = undefined;
    let off = 0;
    while (off < buf.length) {
      if (this.#bodyLeft < 0) {
        const end = buf.indexOf(HEAD_END, off);
        if (end < 0) {
          if (buf.length - off > MAX_HEAD) throw new ProtocolError(`response head longer than ${MAX_HEAD} bytes`);
          this.#pending = buf.subarray(off);
          return;
        }
        this.#current = parseHead(buf.toString('latin1', off, end), this.keepBody);
        this.#bodyLeft = this.#current.length;
        this.#bodyParts = [];
        off = end + 4;
      }
      const take = Math.min(this.#bodyLeft, buf.length - off);
      if (this.keepBody && take > 0) this.#bodyParts.push(Buffer.from(buf.subarray(off, off + take)));
      this.#bodyLeft -= take;
      off += take;
      if (this.#bodyLeft === 0) {
        const r = this.#current!;
        if (this.keepBody) r.body = Buffer.concat(this.#bodyParts);
        this.#bodyLeft = -1;
        this.#current = undefined;
        onResponse(r);
      }
    }
  }
}

/** Parses a response head (without the terminating blank line). */
export function parseHead(head: string, keepHead = false): Response {
  if (!head.startsWith('HTTP/1.') || head.length < 12 || head[8] !== ' ') throw new ProtocolError(`not an HTTP/1.x status line: ${JSON.stringify(head.slice(0, 40))}`);
  const status = Number(head.slice(9, 12));
  if (!Number.isInteger(status) || status < 100 || status > 599) throw new ProtocolError(`bad status code ${JSON.stringify(head.slice(9, 12))}`);
  if (CHUNKED.test(head)) throw new ProtocolError('chunked responses are not supported');
  const m = CONTENT_LENGTH.exec(head);
  let length: number;
  if (m) length = Number(m[1]);
  else if (status === 204 || status === 304 || status < 200) length = 0;
  else throw new ProtocolError(`status ${status} without Content-Length`);
  const r: Response = { status, length, close: CONN_CLOSE.test(head) };
  if (keepHead) r.head = head;
  return r;
}

/** Header lines of a head as [name, value] pairs (names as sent). */
export function headerPairs(head: string): [string, string][] {
  return head
    .split('\r\n')
    .slice(1)
    .map((line) => {
      const colon = line.indexOf(':');
      if (colon <= 0) throw new ProtocolError(`bad header line ${JSON.stringify(line)}`);
      return [line.slice(0, colon).trim(), line.slice(colon + 1).trim()] as [string, string];
    });
}
