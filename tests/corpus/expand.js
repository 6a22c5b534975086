// Expansion of a corpus case's raw template (cases.js documents the placeholders) into the bytes
// sent, as latin1 strings (one char per byte).

/** The bodies and embedded requests of case `id`; ctx = { key, key2, host, model }. */
function bodiesFor(id, { key, host, model }) {
  const content = `corpus:${id}`;
  const chat = { model, messages: [{ role: 'user', content }], max_tokens: 3 };
  const completion = { model, prompt: content, max_tokens: 3 };
  const smuggledBody = JSON.stringify({ model, messages: [{ role: 'user', content: `${content}:smuggled` }], max_tokens: 3 });
  return {
    chat: JSON.stringify(chat),
    chat_stream: JSON.stringify({ ...chat, stream: true }),
    chat_usage: JSON.stringify({ ...chat, stream: true, stream_options: { include_usage: true } }),
    completion: JSON.stringify(completion),
    completion_stream: JSON.stringify({ ...completion, stream: true }),
    embedding: JSON.stringify({ model, input: content }),
    smuggle:
      `POST /v1/chat/completions HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${key}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${smuggledBody.length}\r\n\r\n${smuggledBody}`,
    models: `GET /v1/models HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${key}\r\n\r\n`,
  };
}

const hex = (n) => n.toString(16);
/** Chunked framing of pieces [[data, extension]] plus the last chunk. */
function chunks(pieces) {
  return pieces.map(([p, ext = '']) => `${hex(p.length)}${ext}\r\n${p}\r\n`).join('') + '0\r\n\r\n';
}
const PLACEHOLDER =
  /\{(key2|key|host|model|(chat|chat_stream|chat_usage|completion|completion_stream|embedding|smuggle|models)(?:\.(len|hex8|hex|chunked3|chunked|bytewise))?)\}/g;

/**
 * A case's raw template (a string or parts) → the array of parts to send, expanded.
 * ctx = { key, key2, host, model }. Throws on a malformed template.
 */
export function expandCase(c, ctx) {
  const b = bodiesFor(c.id, ctx);
  const one = (t) => {
    let s = t.replace(PLACEHOLDER, (_, all, name, form) => {
      if (all === 'key' || all === 'key2' || all === 'host' || all === 'model') return ctx[all];
      const v = b[name];
      switch (form) {
        case undefined: return v;
        case 'len': return String(v.length);
        case 'hex': return hex(v.length);
        case 'hex8': return hex(v.length).padStart(8, '0');
        case 'chunked': return chunks([[v]]);
        case 'chunked3': {
          const a = Math.floor(v.length / 3);
          return chunks([[v.slice(0, a)], [v.slice(a, 2 * a), ';corpus=1'], [v.slice(2 * a)]]);
        }
        case 'bytewise': return chunks([...v].map((ch) => [ch]));
        default: throw new Error(`unknown form ${form}`);
      }
    });
    // {rest.len}: the length of what follows the next blank line (independent of the text before)
    for (let at = s.indexOf('{rest.len}'); at >= 0; at = s.indexOf('{rest.len}')) {
      const end = s.indexOf('\r\n\r\n', at);
      if (end < 0) throw new Error(`${c.id}: {rest.len} without a blank line after it`);
      s = s.slice(0, at) + String(s.length - (end + 4)) + s.slice(at + '{rest.len}'.length);
    }
    return s;
  };
  return (Array.isArray(c.raw) ? c.raw : [c.raw]).map(one);
}
