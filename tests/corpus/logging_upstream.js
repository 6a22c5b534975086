// The logging upstream of the request corpus: a TCP relay in front of the real tollgate-stub
// (bench/stub, which answers like OpenRouter: chat completions as JSON or SSE with usage,
// completions, embeddings). It passes bytes through unchanged both ways and records every
// request tollgate sends upstream exactly as it arrived: the raw head, the framing fields and
// the body (decoded by the request's own framing).
//
//   const up = await startLoggingUpstream('http://127.0.0.1:PORT');  // the stub
//   up.url;                 // point tollgate's upstream_url at `${up.url}/api/v1`
//   up.bytes; up.requests;  // everything received so far
//   await up.close();

import { connect, createServer } from 'node:net';

import { readMessage, show } from './http_wire.js';

/**
 * A recorded upstream request: { seq, conn, at (ms), head (latin1 string), startLine,
 * fields: [[name, value]], framing: { contentLength: [], transferEncoding: [] },
 * body (Buffer) }, or { seq, conn, at, unparsed: Buffer, why } for bytes that did not read as
 * an HTTP/1.1 request (counted as a request: the upstream received them).
 */
export async function startLoggingUpstream(targetUrl) {
  const target = new URL(targetUrl);
  const log = { requests: [], bytes: 0 };
  const sockets = new Set();
  let connSeq = 0;

  const server = createServer((down) => {
    const conn = ++connSeq;
    let pending = Buffer.alloc(0);
    let broken = false;
    const up = connect({ host: target.hostname, port: Number(target.port) });
    sockets.add(down);
    sockets.add(up);
    const drop = () => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
    };
    down.on('error', drop);
    up.on('error', drop);
    down.on('close', drop);
    up.on('close', drop);
    down.on('data', (d) => {
      log.bytes += d.length;
      up.write(d);
      if (broken) return;
      pending = Buffer.concat([pending, d]);
      for (;;) {
        const msg = readMessage(pending, 'request');
        if (msg.state === 'need_more') break;
        if (msg.state === 'error') {
          broken = true;
          log.requests.push({ seq: log.requests.length, conn, at: Date.now(), unparsed: pending, why: msg.why });
          break;
        }
        log.requests.push({
          seq: log.requests.length,
          conn,
          at: Date.now(),
          head: msg.head.toString('latin1'),
          startLine: msg.startLine,
          fields: msg.fields,
          framing: msg.framing,
          body: Buffer.from(msg.body),
        });
        pending = pending.subarray(msg.consumed);
      }
    });
    up.on('data', (d) => down.write(d));
    up.on('end', () => down.end());
    down.on('end', () => up.end());
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    get requests() {
      return log.requests;
    },
    get bytes() {
      return log.bytes;
    },
    /** One line per request, for failure messages. */
    describe(from = 0) {
      return log.requests
        .slice(from)
        .map((r) => (r.unparsed ? `#${r.seq} unparsed (${r.why}): ${show(r.unparsed, 200)}` : `#${r.seq} ${show(r.head, 400)} body ${show(r.body, 200)}`))
        .join('\n');
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
