// Raw HTTP/1.1 on node:net for the request corpus: a client connection that sends exact bytes
// and reads responses (status, fields, body by Content-Length, chunked or close; 1xx kept apart)
// and notices FIN/RST; and a reader for the request stream an upstream receives. Bytes are
// handled as Buffers and shown as latin1, so NUL, CR and raw UTF-8 survive unchanged.
//
// The reader is deliberately forgiving (it must describe what arrived, not judge it): the corpus
// runner decides what was wrong.

import { connect } from 'node:net';

const CRLF2 = Buffer.from('\r\n\r\n');

/**
 * Splits a message head (start line and field lines, without the blank line) into
 * { startLine, fields: [[name, value]] }. Names keep their case; values are OWS-trimmed.
 */
export function splitHead(head) {
  const lines = head.toString('latin1').split('\r\n');
  const startLine = lines.shift();
  const fields = lines.map((l) => {
    const colon = l.indexOf(':');
    if (colon < 0) return [l, ''];
    return [l.slice(0, colon), l.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '')];
  });
  return { startLine, fields };
}

/** Values of every field line named `name` (case-insensitive). */
export function fieldValues(fields, name) {
  const n = name.toLowerCase();
  return fields.filter(([k]) => k.toLowerCase() === n).map(([, v]) => v);
}

/**
 * Decodes a chunked body at `buf[pos..]`. Returns { state: 'complete', body, end, trailers }
 * (end = offset after the last CRLF), { state: 'need_more' } or { state: 'error', why }.
 */
export function decodeChunked(buf, pos) {
  const parts = [];
  for (;;) {
    const eol = buf.indexOf('\r\n', pos, 'latin1');
    if (eol < 0) return { state: 'need_more' };
    const sizeText = buf.toString('latin1', pos, eol).split(';')[0].trim();
    if (!/^[0-9a-fA-F]+$/.test(sizeText)) return { state: 'error', why: `bad chunk size ${JSON.stringify(sizeText.slice(0, 40))}` };
    const size = parseInt(sizeText, 16);
    pos = eol + 2;
    if (size === 0) {
      // trailer section: field lines until an empty line
      const trailers = [];
      for (;;) {
        const tl = buf.indexOf('\r\n', pos, 'latin1');
        if (tl < 0) return { state: 'need_more' };
        if (tl === pos) return { state: 'complete', body: Buffer.concat(parts), end: tl + 2, trailers };
        trailers.push(buf.toString('latin1', pos, tl));
        pos = tl + 2;
      }
    }
    if (buf.length < pos + size + 2) return { state: 'need_more' };
    parts.push(buf.subarray(pos, pos + size));
    if (buf[pos + size] !== 0x0d || buf[pos + size + 1] !== 0x0a) return { state: 'error', why: 'no CRLF after chunk data' };
    pos += size + 2;
  }
}

/**
 * Reads one HTTP/1.1 message at the start of `buf`.
 *   kind: 'response' (body by status, Transfer-Encoding, Content-Length, else until `eof`)
 *      or 'request' (body by Transfer-Encoding, Content-Length, else none).
 * Returns { state: 'need_more' } | { state: 'error', why } |
 *   { state: 'complete', consumed, head (Buffer), startLine, fields, body (Buffer), framing }
 * where framing = { contentLength: [values], transferEncoding: [values] }.
 */
export function readMessage(buf, kind, eof = false) {
  const end = buf.indexOf(CRLF2);
  if (end < 0) return eof && buf.length ? { state: 'error', why: 'connection closed inside a head' } : { state: 'need_more' };
  const head = buf.subarray(0, end);
  const { startLine, fields } = splitHead(head);
  const bodyStart = end + 4;
  const framing = {
    contentLength: fieldValues(fields, 'content-length'),
    transferEncoding: fieldValues(fields, 'transfer-encoding'),
  };
  const done = (body, consumed) => ({ state: 'complete', consumed, head, startLine, fields, body, framing });
  let status = 0;
  if (kind === 'response') {
    const m = /^HTTP\/\d\.\d (\d{3})/.exec(startLine);
    if (!m) return { state: 'error', why: `bad status line ${JSON.stringify(startLine.slice(0, 80))}` };
    status = Number(m[1]);
    if (status < 200 || status === 204 || status === 304) return done(Buffer.alloc(0), bodyStart);
  }
  if (framing.transferEncoding.length) {
    const r = decodeChunked(buf, bodyStart);
    if (r.state === 'complete') return done(r.body, r.end);
    if (r.state === 'need_more' && eof) return { state: 'error', why: 'connection closed inside a chunked body' };
    return r;
  }
  if (framing.contentLength.length) {
    const n = Number(framing.contentLength[0]);
    if (!Number.isSafeInteger(n) || n < 0) return { state: 'error', why: `bad Content-Length ${framing.contentLength[0]}` };
    if (buf.length < bodyStart + n)
      return eof ? { state: 'error', why: 'connection closed inside a body' } : { state: 'need_more' };
    return done(buf.subarray(bodyStart, bodyStart + n), bodyStart + n);
  }
  if (kind === 'request') return done(Buffer.alloc(0), bodyStart);
  if (!eof) return { state: 'need_more' };
  return done(buf.subarray(bodyStart), buf.length);
}

/** Status code of a parsed response message. */
export const statusOf = (msg) => Number(/^HTTP\/\d\.\d (\d{3})/.exec(msg.startLine)[1]);

/** Printable form of some bytes for failure messages (control bytes escaped, capped). */
export function show(bytes, max = 300) {
  const s = Buffer.isBuffer(bytes) ? bytes.toString('latin1') : String(bytes);
  const cut = s.length > max ? `${s.slice(0, max)}…(${s.length} bytes)` : s;
  return JSON.stringify(cut);
}

/**
 * One client connection. Collects everything received; `ended` is set on FIN, `reset` on an
 * error (ECONNRESET, EPIPE), `closed` once the socket is gone either way.
 */
export class RawConnection {
  static open(port, host = '127.0.0.1') {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host });
      s.once('connect', () => {
        s.removeListener('error', reject);
        resolve(new RawConnection(s));
      });
      s.once('error', reject);
    });
  }

  constructor(socket) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.ended = false;
    this.closed = false;
    this.reset = null;
    this.waiters = new Set();
    socket.setNoDelay(true);
    socket.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', (e) => {
      this.reset = e.code || e.message;
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  wake() {
    for (const w of this.waiters) w();
  }

  /** True once the peer sent FIN or the connection broke. */
  get gone() {
    return this.ended || this.closed || this.reset !== null;
  }

  /** Resolves when `pred()` holds (true) or after `ms` (false). */
  waitFor(pred, ms) {
    if (pred()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const check = () => {
        if (!pred()) return;
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        resolve(false);
      }, ms);
      this.waiters.add(check);
    });
  }

  /** Writes bytes; resolves when flushed or when the write failed (never rejects). */
  write(bytes) {
    if (this.socket.destroyed || this.socket.writableEnded) return Promise.resolve(false);
    return new Promise((resolve) => {
      this.socket.write(bytes, (err) => resolve(!err));
    });
  }

  /**
   * Reads the next final response, keeping 1xx responses in `interim`. Resolves to
   * { response, interim } or { error: 'timeout' | 'closed' | why, interim, partial }.
   */
  async readResponse(ms) {
    const deadline = Date.now() + ms;
    const interim = [];
    for (;;) {
      const msg = readMessage(this.buf, 'response', this.gone);
      if (msg.state === 'complete') {
        this.buf = this.buf.subarray(msg.consumed);
        const status = statusOf(msg);
        const response = { status, startLine: msg.startLine, fields: msg.fields, body: msg.body, head: msg.head };
        if (status >= 100 && status < 200) {
          interim.push(response);
          continue;
        }
        return { response, interim };
      }
      if (msg.state === 'error') return { error: msg.why, interim, partial: this.buf };
      if (this.gone) return { error: this.buf.length ? 'closed inside a response' : 'closed', interim, partial: this.buf };
      const left = deadline - Date.now();
      if (left <= 0) return { error: 'timeout', interim, partial: this.buf };
      const before = this.buf.length;
      await this.waitFor(() => this.buf.length !== before || this.gone, left);
    }
  }

  /** Waits up to `ms` for the peer to close; true if it did. */
  waitClosed(ms) {
    return this.waitFor(() => this.gone, ms);
  }

  destroy() {
    this.socket.destroy();
  }
}
