// A hostile OpenAI-style upstream (in-process, node:http). The part of the model name after
// the namespace's slash picks the misbehaviour:
//   garbage       200 application/json with a body that is not JSON
//   garbage_sse   200 event-stream of events that are not JSON, then [DONE]
//   endless       200 event-stream: a content chunk every 20 ms, never ending
//   stall         200 event-stream: one content chunk, then silence (the connection stays open)
//   flood         200 event-stream: 64 KiB content chunks as fast as the connection takes them
//   tokens_1e9    200 JSON, usage 10^9 prompt + 10^9 completion tokens
//   tokens_1e12   200 JSON, usage 10^12 prompt + 10^12 completion tokens
//   negative      200 JSON, usage −1,000 prompt and −5 completion tokens, cost −5
//   cost_30       200 JSON, usage 10 + 5 tokens, cost a 30-digit number (USD)
//   cost_1e300    200 JSON, usage 10 + 5 tokens, cost 1e300
// Every request is logged: {mode, openedAt, closedAt (ms, performance.now()), events}.
import http from 'node:http';
import { performance } from 'node:perf_hooks';

const chunk = (i, content) => `data: ${JSON.stringify({ id: `gen-h${i}`, object: 'chat.completion.chunk',
  choices: [{ index: 0, delta: { content }, finish_reason: null }], usage: null })}\n\n`;

function completion(usage) {
  return JSON.stringify({ id: 'gen-hostile', object: 'chat.completion',
    choices: [{ index: 0, message: { role: 'assistant', content: 'hostile' }, finish_reason: 'stop' }], usage });
}
/** JSON with `cost` spliced in as a raw number token (JSON.stringify cannot write 30 digits). */
function completionWithCost(usage, costToken) {
  return completion({ ...usage, cost: 0 }).replace('"cost":0', `"cost":${costToken}`);
}

export async function startHostile() {
  const log = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      let model = '';
      try { model = JSON.parse(body).model || ''; } catch { /* not JSON */ }
      const mode = model.slice(model.indexOf('/') + 1);
      const entry = { mode, openedAt: performance.now(), closedAt: NaN, events: 0 };
      log.push(entry);
      res.on('close', () => { entry.closedAt = performance.now(); });
      const json = (text) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      };
      const sse = () => res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      switch (mode) {
        case 'garbage': {
          const bytes = Buffer.from([0x00, 0xff, 0x7b, 0x7b, 0x6e, 0x6f, 0x74, 0x20, 0x6a, 0x73, 0x6f, 0x6e, 0xfe, 0x0a]);
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': bytes.length });
          res.end(bytes);
          break;
        }
        case 'garbage_sse':
          sse();
          for (let i = 0; i < 5; ++i) res.write('data: {"choices":[{"delta":{"content":"x"}}]\u0000 not json\n\n');
          res.end('data: [DONE]\n\n');
          break;
        case 'endless': {
          sse();
          let i = 0;
          const t = setInterval(() => { if (!res.destroyed) { res.write(chunk(i++, 'tok ')); entry.events = i; } }, 20);
          res.on('close', () => clearInterval(t));
          break;
        }
        case 'flood': {
          sse();
          const big = chunk(0, 'x'.repeat(64 * 1024));
          const pump = () => {
            while (!res.destroyed && res.write(big)) ++entry.events;
            if (!res.destroyed) res.once('drain', pump);
          };
          pump();
          break;
        }
        case 'stall':
          sse();
          res.write(chunk(0, 'tok '));
          entry.events = 1;
          break;  // and nothing more, ever
        case 'tokens_1e9':
          json(completion({ prompt_tokens: 1e9, completion_tokens: 1e9, total_tokens: 2e9 }));
          break;
        case 'tokens_1e12':
          json(completion({ prompt_tokens: 1e12, completion_tokens: 1e12, total_tokens: 2e12 }));
          break;
        case 'negative':
          json(completionWithCost({ prompt_tokens: -1000, completion_tokens: -5, total_tokens: -1005 }, '-5'));
          break;
        case 'cost_30':
          json(completionWithCost({ prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 }, '123456789012345678901234567890'));
          break;
        case 'cost_1e300':
          json(completionWithCost({ prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 }, '1e300'));
          break;
        default:
          res.writeHead(404, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: { code: 404, message: `no hostile mode ${mode}` } }));
      }
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url, apiUrl: `${url}/api/v1`, log,
    close: () => { server.closeAllConnections(); return new Promise((r) => server.close(r)); },
  };
}
