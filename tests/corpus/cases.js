// The request corpus (tollgate issue 10): raw requests with their expected outcome, by category.
//
// A case is { id, category, raw, expect, why?, check? }:
//   raw     the bytes to send, as a latin1 string (every char one byte), or an array of parts sent
//           one after the other (30 ms apart, or after the 100 Continue when expect.continue).
//           Placeholders, expanded by the runner (corpus.test.js):
//             {key} {key2}   two valid API keys of the test account (41 bytes each)
//             {host}         127.0.0.1:<tollgate's port>
//             {chat} {chat_stream} {chat_usage} {completion} {completion_stream} {embedding}
//                            valid JSON bodies for the harness' priced model; each carries the
//                            marker "corpus:<case id>" that the upstream log is matched on
//             {smuggle}      a complete, valid, authenticated POST /v1/chat/completions whose
//                            body carries "corpus:<case id>:smuggled": it must never reach the
//                            upstream nor be answered
//             {models}       a complete, valid GET /v1/models
//             {X.len} {X.hex} {X.hex8}  byte length of X in decimal / hex / 8 hex digits
//             {X.chunked}    X as one chunk and the last chunk; {X.chunked3}: three chunks, the
//                            second with an extension; {X.bytewise}: one chunk per byte
//             {rest.len}     the byte length of everything after the blank line that follows it
//   expect  status       a status, a list of acceptable statuses, or null: closed with no response
//           responses    instead of status: one entry per response (pipelining)
//           conn         'closed' (the peer closes after the last response), 'open' (a follow-up
//                        GET /v1/models on the same socket is answered 200) or 'any'
//           upstream     how many requests the logging upstream must receive (0: not one byte);
//                        or { status: count } when several statuses are acceptable
//           path         the upstream path of forwarded requests
//           sse          the answer is an event stream that ends with data: [DONE]
//           continue     parts: send the head, require "100 Continue", then the body
//           closeHeader  false: a closing answer need not say Connection: close (default: must)
//   check   self-checks of the expanded bytes (requestLine / headerSection / fields / chunkLine
//           byte counts), so that a boundary case tests the boundary it names.
//
// Expected outcomes follow RFC 9112/9110 and the issue: 400 + Connection: close + closed for
// framing errors, 414 request line > 8 KiB, 431 header section > 16 KiB or > 100 fields, 501 for
// an unknown coding before chunked, 505 for HTTP versions other than 1.x, 413 bodies over
// server.max_body_bytes (10 MiB), 405 (kept alive) for a known path with the wrong method.

export const KEY_LEN = 41; // tg_ + 38

const CRLF = '\r\n';
/** A request: start line, field lines, blank line, then `body`. */
const R = (line, fields, body = '') => `${line}${CRLF}${fields.map((f) => f + CRLF).join('')}${CRLF}${body}`;

const HOST = 'Host: {host}';
const AUTH = 'Authorization: Bearer {key}';
const CT = 'Content-Type: application/json';
const CHAT_LINE = 'POST /v1/chat/completions HTTP/1.1';
const MODELS_LINE = 'GET /v1/models HTTP/1.1';

const CHAT = '/api/v1/chat/completions';
const COMPLETIONS = '/api/v1/completions';
const EMBEDDINGS = '/api/v1/embeddings';

/** POST /v1/chat/completions with Host, Authorization, Content-Type, `fields`, then the body. */
function chat(fields = [], { line = CHAT_LINE, body = '{chat}', cl = 'Content-Length: {chat.len}', host = HOST, auth = AUTH } = {}) {
  return R(line, [...(host ? [host] : []), ...(auth ? [auth] : []), CT, ...(cl ? [cl] : []), ...fields], body);
}
/** POST /v1/chat/completions, chunked body. */
const chatChunked = (fields = [], opts = {}) =>
  chat(['Transfer-Encoding: chunked', ...fields], { cl: null, body: '{chat.chunked}', ...opts });
/** GET /v1/models with Host, Authorization and `fields`. */
function models(fields = [], { line = MODELS_LINE, host = HOST, auth = AUTH, body = '' } = {}) {
  return R(line, [...(host ? [host] : []), ...(auth ? [auth] : []), ...fields], body);
}

// Outcomes
const reject = (status = 400, extra = {}) => ({ status, conn: 'closed', upstream: 0, ...extra });
const forwarded = (path = CHAT, extra = {}) => ({ status: 200, conn: 'open', upstream: 1, path, ...extra });
const local = (status = 200, extra = {}) => ({ status, conn: 'open', upstream: 0, ...extra });

const cases = [];
let category = '';
const add = (id, raw, expect, more = {}) => cases.push({ id: `${category}/${id}`, category, raw, expect, ...more });

// ---------------------------------------------------------------------------------------------
category = 'control'; // valid requests of every route: each reaches the upstream exactly once
add('chat', chat(), forwarded());
add('chat-stream', chat([], { body: '{chat_stream}', cl: 'Content-Length: {chat_stream.len}' }), forwarded(CHAT, { sse: true }));
add('chat-stream-include-usage', chat([], { body: '{chat_usage}', cl: 'Content-Length: {chat_usage.len}' }), forwarded(CHAT, { sse: true }));
add('completions', R('POST /v1/completions HTTP/1.1', [HOST, AUTH, CT, 'Content-Length: {completion.len}'], '{completion}'), forwarded(COMPLETIONS));
add('completions-stream', R('POST /v1/completions HTTP/1.1', [HOST, AUTH, CT, 'Content-Length: {completion_stream.len}'], '{completion_stream}'),
  forwarded(COMPLETIONS, { sse: true }));
add('embeddings', R('POST /v1/embeddings HTTP/1.1', [HOST, AUTH, CT, 'Content-Length: {embedding.len}'], '{embedding}'), forwarded(EMBEDDINGS));
add('models', models(), local(), { why: 'served from the price table: never forwarded' });
add('chat-chunked', chatChunked(), forwarded());
add('chat-chunked-3-with-extension', chat(['Transfer-Encoding: chunked'], { cl: null, body: '{chat.chunked3}' }), forwarded());
add('chat-chunked-bytewise', chat(['Transfer-Encoding: chunked'], { cl: null, body: '{chat.bytewise}' }), forwarded());
add('completions-chunked', R('POST /v1/completions HTTP/1.1', [HOST, AUTH, CT, 'Transfer-Encoding: chunked'], '{completion.chunked}'), forwarded(COMPLETIONS));
add('embeddings-chunked', R('POST /v1/embeddings HTTP/1.1', [HOST, AUTH, CT, 'Transfer-Encoding: chunked'], '{embedding.chunked}'), forwarded(EMBEDDINGS));
add('chat-connection-close', chat(['Connection: close']), { ...forwarded(), conn: 'closed' });
add('chat-hop-by-hop-fields', chat([
  'Connection: keep-alive, X-Corpus-Client, TE', 'Keep-Alive: timeout=5', 'TE: trailers',
  'Proxy-Authorization: Basic Zm9vOmJhcg==', 'Proxy-Connection: keep-alive', 'X-Corpus-Client: must-not-reach-upstream',
  'Upgrade: h2c', 'Trailer: X-Checksum',
]), forwarded(), { why: 'tollgate frames the upstream request itself: no client field reaches it' });
add('chat-http10', chat([], { line: 'POST /v1/chat/completions HTTP/1.0' }), { ...forwarded(), conn: 'closed' });
add('chat-leading-empty-line', CRLF + chat(), forwarded(), { why: 'RFC 9112 §2.2: SHOULD ignore at least one empty line before the request line' });
add('chat-field-name-case', R(CHAT_LINE, ['hOsT: {host}', 'AUTHORIZATION: Bearer {key}', 'content-type: application/json', 'CONTENT-LENGTH: {chat.len}'], '{chat}'),
  forwarded(), { why: 'field names are case-insensitive (RFC 9110 §5.1)' });
add('chat-query-string', chat([], { line: 'POST /v1/chat/completions?corpus=1 HTTP/1.1' }), forwarded());
add('models-query-string', models([], { line: 'GET /v1/models?a=1&b=%20 HTTP/1.1' }), local());

// ---------------------------------------------------------------------------------------------
category = 'smuggling'; // Content-Length / Transfer-Encoding: never two framings, never guessed
add('cl-te', chat(['Content-Length: {rest.len}', 'Transfer-Encoding: chunked'], { cl: null, body: '0\r\n\r\n{smuggle}' }), reject(),
  { why: 'RFC 9112 §6.3: CL with TE is a smuggling attempt; close after answering' });
add('te-cl', chat(['Transfer-Encoding: chunked', 'Content-Length: 4'], { cl: null, body: '{smuggle.hex}\r\n{smuggle}\r\n0\r\n\r\n' }), reject());
add('cl0-te', chat(['Content-Length: 0', 'Transfer-Encoding: chunked'], { cl: null, body: '{chat.chunked}' }), reject());
add('te-cl0', chat(['Transfer-Encoding: chunked', 'Content-Length: 0'], { cl: null, body: '{chat.chunked}' }), reject());
add('cl-te-lowercase', chat(['content-length: {rest.len}', 'transfer-encoding: chunked'], { cl: null, body: '0\r\n\r\n{smuggle}' }), reject());
add('cl-te-uppercase', chat(['CONTENT-LENGTH: {rest.len}', 'TRANSFER-ENCODING: CHUNKED'], { cl: null, body: '0\r\n\r\n{smuggle}' }), reject());
add('cl-te-far-apart', chat(['Content-Length: {rest.len}', 'X-A: 1', 'X-B: 2', 'Accept: */*', 'Transfer-Encoding: chunked'], { cl: null, body: '0\r\n\r\n{smuggle}' }), reject());
add('cl-te-tab', chat(['Content-Length: {rest.len}', 'Transfer-Encoding:\tchunked'], { cl: null, body: '0\r\n\r\n{smuggle}' }), reject());
add('cl-te-gzip', chat(['Content-Length: {chat.len}', 'Transfer-Encoding: gzip'], { cl: null }), reject([400, 501]));
add('cl-te-http10', chat(['Content-Length: {rest.len}', 'Transfer-Encoding: chunked'], { cl: null, line: 'POST /v1/chat/completions HTTP/1.0', body: '0\r\n\r\n{smuggle}' }), reject());
add('te-chunked-chunked', chat(['Transfer-Encoding: chunked, chunked'], { cl: null, body: '{chat.chunked}' }), reject(),
  { why: 'chunked twice: RFC 9112 §6.1 MUST NOT apply chunked more than once' });
add('te-chunked-twice-lines', chat(['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked'], { cl: null, body: '{chat.chunked}' }), reject());
add('te-gzip-chunked', chat(['Transfer-Encoding: gzip, chunked'], { cl: null, body: '{chat.chunked}' }), reject(501),
  { why: 'an unknown coding before chunked: 501 (RFC 9112 §6.1)' });
add('te-deflate-chunked', chat(['Transfer-Encoding: deflate, chunked'], { cl: null, body: '{chat.chunked}' }), reject(501));
add('te-identity-chunked', chat(['Transfer-Encoding: identity, chunked'], { cl: null, body: '{chat.chunked}' }), reject(501));
add('te-gzip-then-chunked-lines', chat(['Transfer-Encoding: gzip', 'Transfer-Encoding: chunked'], { cl: null, body: '{chat.chunked}' }), reject([400, 501]));
add('te-chunked-gzip', chat(['Transfer-Encoding: chunked, gzip'], { cl: null, body: '{smuggle}' }), reject(),
  { why: 'chunked not last: the length cannot be determined, 400 and close (RFC 9112 §6.3)' });
add('te-gzip', chat(['Transfer-Encoding: gzip'], { cl: null, body: '{smuggle}' }), reject());
add('te-identity', chat(['Transfer-Encoding: identity'], { cl: null, body: '{smuggle}' }), reject());
add('te-empty', chat(['Transfer-Encoding: '], { cl: null, body: '{smuggle}' }), reject());
add('te-xchunked', chat(['Transfer-Encoding: xchunked'], { cl: null, body: '{smuggle}' }), reject());
add('te-chunkedx', chat(['Transfer-Encoding: chunkedx'], { cl: null, body: '{smuggle}' }), reject());
add('te-chunked-param', chat(['Transfer-Encoding: chunked;q=1'], { cl: null, body: '{chat.chunked}' }), reject([400, 501]));
add('te-quoted', chat(['Transfer-Encoding: "chunked"'], { cl: null, body: '{smuggle}' }), reject());
add('te-vertical-tab', chat(['Transfer-Encoding: \x0bchunked'], { cl: null, body: '{chat.chunked}' }), reject());
add('te-form-feed', chat(['Transfer-Encoding: chunked\x0c'], { cl: null, body: '{chat.chunked}' }), reject());
add('te-nbsp', chat(['Transfer-Encoding: \xa0chunked'], { cl: null, body: '{smuggle}' }), reject());
add('te-space-before-colon', chat(['Transfer-Encoding : chunked', 'Content-Length: {chat.len}'], { cl: null }), reject(),
  { why: 'RFC 9112 §5.1: whitespace between field name and colon MUST be rejected with 400' });
add('te-tab-before-colon', chat(['Transfer-Encoding\t: chunked', 'Content-Length: {chat.len}'], { cl: null }), reject());
add('te-obs-fold', chat(['Transfer-Encoding:', ' chunked'], { cl: null, body: '{chat.chunked}' }), reject());
add('te-http10', chat(['Transfer-Encoding: chunked'], { cl: null, line: 'POST /v1/chat/completions HTTP/1.0', body: '{chat.chunked}{smuggle}' }), reject(),
  { why: 'RFC 9112 §6.1: TE in an HTTP/1.0 request is faulty framing: 400 and close' });
add('te-leading-tab-value', chatChunked([], {}).replace('Transfer-Encoding: chunked', 'Transfer-Encoding:\tchunked'), forwarded(),
  { why: 'OWS around a field value is not part of it (RFC 9110 §5.5): valid, reframed with Content-Length' });
add('te-trailing-ows', chatChunked().replace('Transfer-Encoding: chunked', 'Transfer-Encoding: chunked \t'), forwarded());
add('te-uppercase-chunked', chatChunked().replace('Transfer-Encoding: chunked', 'TRANSFER-ENCODING: CHUNKED'), forwarded(),
  { why: 'transfer-coding names are case-insensitive (RFC 9112 §7)' });
add('te-underscore-name', chat(['Transfer_Encoding: chunked']), forwarded(),
  { why: 'Transfer_Encoding is another (unknown) field: the request is framed by Content-Length' });
add('cl-duplicate-same', chat(['Content-Length: {chat.len}']), reject(), { why: 'duplicate Content-Length, even identical (the issue)' });
add('cl-duplicate-different', chat(['Content-Length: 0'], { body: '{chat}{smuggle}' }), reject());
add('cl-list-same', chat([], { cl: 'Content-Length: {chat.len}, {chat.len}' }), reject());
add('cl-list-different', chat([], { cl: 'Content-Length: {chat.len}, 0' }), reject());
add('cl-list-no-space', chat([], { cl: 'Content-Length: {chat.len},{chat.len}' }), reject());
add('cl-plus', chat([], { cl: 'Content-Length: +{chat.len}' }), reject());
add('cl-minus', chat([], { cl: 'Content-Length: -1', body: '{smuggle}' }), reject());
add('cl-hex', chat([], { cl: 'Content-Length: 0x{chat.hex}' }), reject());
add('cl-decimal-point', chat([], { cl: 'Content-Length: {chat.len}.0' }), reject());
add('cl-exponent', chat([], { cl: 'Content-Length: 1e2', body: '{smuggle}' }), reject());
add('cl-trailing-junk', chat([], { cl: 'Content-Length: {chat.len}x' }), reject());
add('cl-inner-space', chat([], { cl: 'Content-Length: 1 {chat.len}' }), reject());
add('cl-empty', chat([], { cl: 'Content-Length: ', body: '{smuggle}' }), reject());
add('cl-space-before-colon', chat([], { cl: 'Content-Length : {chat.len}' }), reject());
add('cl-obs-fold', chat(['Content-Length:', ' {chat.len}'], { cl: null }), reject());
add('cl-huge', chat([], { cl: 'Content-Length: 99999999999999999999999', body: '{chat}' }), reject([400, 413]),
  { why: 'overflows any integer: invalid framing (400) or over the body limit (413), closed either way' });
add('cl-2pow64', chat([], { cl: 'Content-Length: 18446744073709551616', body: '{chat}' }), reject([400, 413]));
add('cl-leading-zero', chat([], { cl: 'Content-Length: 0{chat.len}' }), forwarded(),
  { why: 'Content-Length = 1*DIGIT: a leading zero is valid; tollgate sends its own Content-Length' });
add('cl-many-leading-zeros', chat([], { cl: 'Content-Length: 0000000000000000000000{chat.len}' }), forwarded());
add('cl-ows', chat([], { cl: 'Content-Length:   {chat.len} \t' }), forwarded());
add('te-trailer-smuggles-cl', chat(['Transfer-Encoding: chunked'], { cl: null, body: '{chat.hex}\r\n{chat}\r\n0\r\nContent-Length: 5\r\n\r\n' }), reject(),
  { why: 'trailer fields are refused, never merged into the header' });

// ---------------------------------------------------------------------------------------------
category = 'host';
add('missing-http11', models([], { host: null }), reject(), { why: 'RFC 9112 §3.2: MUST respond 400 to an HTTP/1.1 request without Host' });
add('missing-http11-post', chat([], { host: null }), reject());
add('missing-http10-get', models([], { host: null, line: 'GET /v1/models HTTP/1.0' }), local(200, { conn: 'closed' }),
  { why: 'HTTP/1.0 needs no Host; a 1.0 request without keep-alive ends the connection' });
add('missing-http10-post', chat([], { host: null, line: 'POST /v1/chat/completions HTTP/1.0' }), { ...forwarded(), conn: 'closed' });
add('duplicate-same', models(['Host: {host}']), reject(), { why: 'RFC 9112 §3.2: more than one Host field line: 400' });
add('duplicate-different', models(['Host: other.test']), reject());
add('duplicate-case', models(['host: {host}']), reject());
add('duplicate-post', chat(['Host: {host}']), reject());
add('duplicate-empty-and-value', models([], { host: 'Host:' }).replace('\r\n\r\n', '\r\nHost: {host}\r\n\r\n'), reject());
add('empty', models([], { host: 'Host:' }), local(), { why: 'RFC 9110 §7.2: an empty Host is valid (no authority)' });
add('space-inside', models([], { host: 'Host: corpus .test' }), reject(), { why: 'RFC 9112 §3.2: an invalid Host value: 400' });
add('list', models([], { host: 'Host: a.test, b.test' }), reject());
add('userinfo', models([], { host: 'Host: user@corpus.test' }), reject());
add('userinfo-password', models([], { host: 'Host: user:pw@corpus.test' }), reject());
add('port-alpha', models([], { host: 'Host: corpus.test:http' }), reject());
add('port-too-big', models([], { host: 'Host: corpus.test:65536' }), reject());
add('port-negative', models([], { host: 'Host: corpus.test:-1' }), reject());
add('path', models([], { host: 'Host: corpus.test/v1' }), reject());
add('query', models([], { host: 'Host: corpus.test?x=1' }), reject());
add('backslash', models([], { host: 'Host: corpus.test\\x' }), reject());
add('control-byte', models([], { host: 'Host: corpus\x01.test' }), reject());
add('nul', models([], { host: 'Host: corpus\x00.test' }), reject());
add('del', models([], { host: 'Host: corpus\x7f.test' }), reject());
add('tab-inside', models([], { host: 'Host: corpus\t.test' }), reject());
add('raw-utf8', models([], { host: 'Host: caf\xc3\xa9.test' }), reject(), { why: 'reg-name is RFC 3986 characters (pct-encoded otherwise)' });
add('ipv6-unclosed', models([], { host: 'Host: [::1' }), reject());
add('ipv6', models([], { host: 'Host: [::1]:8080' }), local());
add('ipv4-port', models([], { host: 'Host: 127.0.0.1:8080' }), local());
add('underscore', models([], { host: 'Host: my_host.test' }), local());
add('trailing-ows', models([], { host: 'Host: corpus.test  \t' }), local());
add('pct-encoded', models([], { host: 'Host: corpus%2Etest' }), local());

// ---------------------------------------------------------------------------------------------
category = 'authorization';
add('duplicate-same', chat([AUTH]), reject(), { why: 'the issue: a duplicate Authorization is refused (it was answered 200)' });
add('duplicate-different', chat(['Authorization: Bearer {key2}']), reject());
add('duplicate-case', chat(['authorization: Bearer {key}']), reject());
add('duplicate-empty-first', chat([], { auth: 'Authorization:' }).replace('\r\n\r\n', `\r\n${AUTH}\r\n\r\n`), reject());
add('duplicate-far-apart', chat(['X-A: 1', 'Accept: */*', 'Authorization: Bearer {key2}']), reject());
add('duplicate-get-models', models([AUTH]), reject());
add('missing', chat([], { auth: null }), local(401, { conn: 'any' }),
  { why: 'not a framing error; answered before the body is read, so closing is fine (kept alive: the body must be skipped)' });
add('wrong-key', chat([], { auth: 'Authorization: Bearer tg_000000000000000000000000000000000000aa' }), local(401, { conn: 'any' }));

// ---------------------------------------------------------------------------------------------
category = 'obs-fold'; // RFC 9112 §5.2: reject (400) or replace with SP; tollgate rejects
add('custom-space', chat(['X-Folded: a', ' b']), reject());
add('custom-tab', chat(['X-Folded: a', '\tb']), reject());
add('authorization', chat([], { auth: 'Authorization: Bearer' }).replace('Bearer\r\n', 'Bearer\r\n {key}\r\n'), reject());
add('host', models([], { host: 'Host:' }).replace('Host:\r\n', 'Host:\r\n {host}\r\n'), reject());
add('content-type', chat(['X-A: 1'], {}).replace(`${CT}\r\n`, 'Content-Type: application/\r\n json\r\n'), reject());
add('first-line', chat([]).replace(`${CHAT_LINE}\r\n`, `${CHAT_LINE}\r\n X-Leading: space\r\n`), reject(),
  { why: 'RFC 9112 §2.2: whitespace before the first field line: reject' });
add('whitespace-only-line', chat(['X-A: 1', ' ', 'X-B: 2']), reject());
add('many-folds', chat(['X-Folded: a', ' b', ' c', '\td']), reject());

// ---------------------------------------------------------------------------------------------
category = 'bytes'; // bare LF, bare CR, NUL and control bytes in the head
add('bare-lf-request-line', chat().replace(`${CHAT_LINE}\r\n`, `${CHAT_LINE}\n`), reject());
add('bare-lf-field-line', chat().replace(`${CT}\r\n`, `${CT}\n`), reject());
add('bare-lf-blank-line', chat().replace('\r\n\r\n', '\r\n\n'), reject());
add('bare-lf-everywhere', chat().replace(/\r\n/g, '\n'), reject());
add('bare-lf-in-value', chat(['X-A: a\nb']), reject());
add('bare-cr-in-value', chat(['X-A: a\rb']), reject(), { why: 'RFC 9112 §2.2: a bare CR is invalid (or replaced by SP)' });
add('bare-cr-end-of-line', chat(['X-A: a\r']), reject());
add('bare-cr-request-line', chat().replace('POST /v1/chat', 'POST\r/v1/chat'), reject());
add('bare-cr-in-name', chat(['X-\rA: b']), reject());
add('nul-in-value', chat(['X-A: a\x00b']), reject());
add('nul-in-name', chat(['X-\x00A: b']), reject());
add('nul-in-target', models([], { line: 'GET /v1/models\x00 HTTP/1.1' }), reject());
add('nul-in-method', models([], { line: 'G\x00ET /v1/models HTTP/1.1' }), reject());
add('nul-before-request', '\x00' + models(), reject());
add('soh-in-value', chat(['X-A: a\x01b']), reject());
add('us-in-value', chat(['X-A: a\x1fb']), reject());
add('esc-in-value', chat(['X-A: \x1b[31mred']), reject());
add('del-in-value', chat(['X-A: a\x7fb']), reject());
add('del-in-name', chat(['X-\x7fA: b']), reject());
add('soh-in-name', chat(['X-\x01A: b']), reject());
add('high-byte-in-name', chat(['X-\xe9: b']), reject());
add('vt-in-value', chat(['X-A: a\x0bb']), reject());
add('htab-in-value', chat(['X-A: a\tb']), forwarded(), { why: 'HTAB is allowed inside a field value (RFC 9110 §5.5)' });
add('obs-text-in-value', chat(['X-A: caf\xe9']), forwarded(), { why: 'obs-text (0x80-0xFF) is allowed in a field value' });
add('utf8-in-value', chat(['X-A: caf\xc3\xa9 \xe2\x82\xac']), forwarded());

// ---------------------------------------------------------------------------------------------
category = 'header-syntax';
add('space-before-colon', chat(['X-A : b']), reject(), { why: 'RFC 9112 §5.1: MUST reject with 400' });
add('tab-before-colon', chat(['X-A\t: b']), reject());
add('space-before-colon-host', models([], { host: 'Host : {host}' }), reject());
add('space-before-colon-authorization', chat([], { auth: 'Authorization : Bearer {key}' }), reject());
add('empty-name', chat([': b']), reject());
add('no-colon', chat(['X-A b']), reject());
add('space-in-name', chat(['X A: b']), reject());
add('paren-in-name', chat(['X(A): b']), reject());
add('at-in-name', chat(['X@A: b']), reject());
add('slash-in-name', chat(['X/A: b']), reject());
add('quote-in-name', chat(['X"A: b']), reject());
add('brace-in-name', chat(['X{A}: b']), reject());
add('colon-in-value', chat(['X-A: b:c::d']), forwarded());
add('empty-value', chat(['X-A:']), forwarded());
add('all-tchars-name', chat(["X-!#$%&'*+.^_`|~09Az: v"]), forwarded(), { why: 'every tchar is allowed in a field name' });
add('long-name-4k', chat([`X-${'n'.repeat(4096)}: v`]), forwarded());

// ---------------------------------------------------------------------------------------------
category = 'limits'; // request line 8 KiB (414), header section 16 KiB and 100 fields (431)
const lineOf = (len, prefix = 'GET /v1/models?pad=', suffix = ' HTTP/1.1') => `${prefix}${'a'.repeat(len - prefix.length - suffix.length)}${suffix}`;
const fixedFields = ['Host: corpus.test', `Authorization: Bearer ${'k'.repeat(KEY_LEN)}`];
/** A field line "X-Pad: aaa…" that makes the header section (fields + final CRLF) `total` bytes. */
function padTo(total, fields) {
  const used = fields.reduce((n, f) => n + f.length + 2, 0) + 2;
  return `X-Pad: ${'a'.repeat(total - used - 'X-Pad: '.length - 2)}`;
}
const modelsFixed = (extra, line = MODELS_LINE) => R(line, ['Host: corpus.test', AUTH, ...extra]);
const nFields = (n) => Array.from({ length: n }, (_, i) => `X-F${i}: v`);
add('request-line-8192', R(lineOf(8192), ['Host: corpus.test', AUTH]), local(), { check: { requestLine: 8192 } });
add('request-line-8193', R(lineOf(8193), ['Host: corpus.test', AUTH]), reject(414), { check: { requestLine: 8193 } });
add('request-line-16k', R(lineOf(16384), ['Host: corpus.test', AUTH]), reject(414), { check: { requestLine: 16384 } });
add('request-line-64k-unterminated', `GET /${'a'.repeat(65536)}`, reject(414), { why: 'no CRLF ever: refused once it passes 8 KiB' });
add('request-line-8192-post', chat([], { line: lineOf(8192, 'POST /v1/chat/completions?pad=') }), forwarded(), { check: { requestLine: 8192 } });
add('request-line-8193-post', chat([], { line: lineOf(8193, 'POST /v1/chat/completions?pad=') }), reject(414), { check: { requestLine: 8193 } });
add('header-section-16384', modelsFixed([padTo(16384, fixedFields)]), local(), { check: { headerSection: 16384 } });
add('header-section-16385', modelsFixed([padTo(16385, fixedFields)]), reject(431), { check: { headerSection: 16385 } });
add('header-section-64k', modelsFixed([padTo(65536, fixedFields)]), reject(431), { check: { headerSection: 65536 } });
add('header-section-16385-many-fields', modelsFixed([...Array.from({ length: 60 }, (_, i) => `X-F${i}: ${'b'.repeat(250)}`), padTo(16385, [...fixedFields, ...Array.from({ length: 60 }, (_, i) => `X-F${i}: ${'b'.repeat(250)}`)])]),
  reject(431), { check: { headerSection: 16385 } });
add('header-section-unterminated-64k', `${MODELS_LINE}\r\nHost: corpus.test\r\nX-Pad: ${'a'.repeat(65536)}`, reject(431));
add('fields-100', modelsFixed(nFields(98)), local(), { check: { fields: 100 } });
add('fields-101', modelsFixed(nFields(99)), reject(431), { check: { fields: 101 } });
add('fields-1000', modelsFixed(nFields(998)), reject(431), { check: { fields: 1000 } });
add('fields-100-post', R(CHAT_LINE, ['Host: corpus.test', AUTH, CT, 'Content-Length: {chat.len}', ...nFields(96)], '{chat}'), forwarded(), { check: { fields: 100 } });
add('fields-101-post', R(CHAT_LINE, ['Host: corpus.test', AUTH, CT, 'Content-Length: {chat.len}', ...nFields(97)], '{chat}'), reject(431), { check: { fields: 101 } });

// ---------------------------------------------------------------------------------------------
category = 'chunked'; // chunk-size lines, extensions, data framing and trailers
const chunkedChat = (body) => chat(['Transfer-Encoding: chunked'], { cl: null, body });
const ext = (n) => `;${'e'.repeat(n - 1)}`; // an extension of n bytes, ";" included
add('extension-line-8192', chunkedChat(`{chat.hex8}${ext(8192 - 8)}\r\n{chat}\r\n0\r\n\r\n`), forwarded(), { check: { chunkLine: 8192 } });
add('extension-8193', chunkedChat(`{chat.hex8}${ext(8193)}\r\n{chat}\r\n0\r\n\r\n`), reject(), { check: { chunkLine: 8201 } });
add('extension-64k', chunkedChat(`{chat.hex8}${ext(65536)}\r\n{chat}\r\n0\r\n\r\n`), reject());
add('extension-on-last-chunk-8193', chunkedChat(`{chat.hex}\r\n{chat}\r\n0${ext(8193)}\r\n\r\n`), reject());
add('extension-unterminated-64k', chunkedChat(`{chat.hex}${ext(65536)}`), reject());
add('size-leading-zeros-8192', chunkedChat(`${'0'.repeat(8192 - 8)}{chat.hex8}\r\n{chat}\r\n0\r\n\r\n`), forwarded(), { check: { chunkLine: 8192 } });
add('size-leading-zeros-9000', chunkedChat(`${'0'.repeat(9000)}{chat.hex8}\r\n{chat}\r\n0\r\n\r\n`), reject(),
  { why: 'the issue: chunk-size lines over 8 KiB are refused' });
add('extension-quoted', chunkedChat('{chat.hex};corpus="a b;c";x=1\r\n{chat}\r\n0\r\n\r\n'), forwarded());
add('extension-name-only', chunkedChat('{chat.hex};x\r\n{chat}\r\n0\r\n\r\n'), forwarded());
add('extension-bws', chunkedChat('{chat.hex} ;x=1\r\n{chat}\r\n0\r\n\r\n'), forwarded(), { why: 'chunk-ext = *( BWS ";" BWS name … ): BWS is valid' });
add('extension-control-byte', chunkedChat('{chat.hex};x=a\x01b\r\n{chat}\r\n0\r\n\r\n'), reject());
add('extension-bare-cr', chunkedChat('{chat.hex};x=a\rb\r\n{chat}\r\n0\r\n\r\n'), reject());
add('extension-quoted-bare-lf', chunkedChat('{chat.hex};x="a\nb"\r\n{chat}\r\n0\r\n\r\n'), reject(),
  { why: 'found by fuzz_request_parser: Beast 1.81 let a bare LF through inside a quoted extension' });
add('extension-quoted-nul', chunkedChat('{chat.hex};x="a\x00b"\r\n{chat}\r\n0\r\n\r\n'), reject());
add('size-not-hex', chunkedChat('g\r\n{chat}\r\n0\r\n\r\n'), reject());
add('size-empty', chunkedChat('\r\n{chat}\r\n0\r\n\r\n'), reject());
add('size-negative', chunkedChat('-5\r\nhello\r\n0\r\n\r\n'), reject());
add('size-0x', chunkedChat('0x{chat.hex}\r\n{chat}\r\n0\r\n\r\n'), reject());
add('size-leading-space', chunkedChat(' {chat.hex}\r\n{chat}\r\n0\r\n\r\n'), reject());
add('size-trailing-space', chunkedChat('{chat.hex} \r\n{chat}\r\n0\r\n\r\n'), reject(), { why: 'BWS only before ";": "5 " is not a chunk-size line' });
add('size-plus', chunkedChat('+{chat.hex}\r\n{chat}\r\n0\r\n\r\n'), reject());
add('size-overflow-2pow64', chunkedChat('10000000000000000\r\n{chat}\r\n0\r\n\r\n'), reject([400, 413]));
add('size-overflow-40-hex', chunkedChat(`${'f'.repeat(40)}\r\n{chat}\r\n0\r\n\r\n`), reject([400, 413]));
add('size-over-body-limit', chunkedChat('a00001\r\n{chat}'), reject(413), { why: 'a single chunk above max_body_bytes (10 MiB)' });
add('data-longer-than-size', chunkedChat('{chat.hex}\r\n{chat}XX\r\n0\r\n\r\n'), reject());
add('lf-after-size', chunkedChat('{chat.hex}\n{chat}\r\n0\r\n\r\n'), reject());
add('lf-after-data', chunkedChat('{chat.hex}\r\n{chat}\n0\r\n\r\n'), reject());
add('lf-last-chunk', chunkedChat('{chat.hex}\r\n{chat}\r\n0\n\r\n'), reject());
add('lf-last-chunk-then-request', chunkedChat('{chat.hex}\r\n{chat}\r\n0\n\r\n{smuggle}'), reject(),
  { why: 'the next request must not be read as the trailer section, nor run' });
add('cr-only-after-data', chunkedChat('{chat.hex}\r\n{chat}\r0\r\n\r\n'), reject());
add('trailer-small', chunkedChat('{chat.hex}\r\n{chat}\r\n0\r\nX-Trailer: v\r\n\r\n'), reject(), { why: 'trailers are refused (never merged into the header)' });
add('trailer-authorization', chunkedChat('{chat.hex}\r\n{chat}\r\n0\r\nAuthorization: Bearer {key2}\r\n\r\n'), reject());
add('trailer-transfer-encoding', chunkedChat('{chat.hex}\r\n{chat}\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n'), reject());
add('trailer-obs-fold', chunkedChat('{chat.hex}\r\n{chat}\r\n0\r\nX-T: a\r\n b\r\n\r\n'), reject());
add('trailer-64k', chunkedChat(`{chat.hex}\r\n{chat}\r\n0\r\nX-Big: ${'a'.repeat(65536)}\r\n\r\n`), reject(),
  { why: 'a trailer field >= 64 KiB made Beast 1.81 throw std::length_error and end the process' });
add('trailer-70k', chunkedChat(`{chat.hex}\r\n{chat}\r\n0\r\nX-Big: ${'a'.repeat(70000)}\r\n\r\n`), reject());
add('trailer-1m', chunkedChat(`{chat.hex}\r\n{chat}\r\n0\r\nX-Big: ${'a'.repeat(1 << 20)}\r\n\r\n`), reject());
add('trailers-200-fields', chunkedChat(`{chat.hex}\r\n{chat}\r\n0\r\n${Array.from({ length: 200 }, (_, i) => `X-T${i}: ${'t'.repeat(500)}\r\n`).join('')}\r\n`), reject());
add('trailer-64k-get-models', models(['Transfer-Encoding: chunked'], { body: `0\r\nX-Big: ${'a'.repeat(65536)}\r\n\r\n` }), reject([200, 400]),
  { why: 'a GET with a body: answered (and closed) without reading it, or refused; never a crash' });
const A64K = 'a'.repeat(65536);
add('body-over-limit-streamed', chunkedChat(`10000\r\n${A64K}\r\n`.repeat(161) + '0\r\n\r\n'), reject(413),
  { why: '161 chunks of 64 KiB = 10.06 MiB > max_body_bytes' });
add('empty-body', chunkedChat('0\r\n\r\n'), { status: 400, conn: 'any', upstream: 0 }, { why: 'valid framing, no JSON: a 400 from the body check' });

// ---------------------------------------------------------------------------------------------
category = 'methods'; // only GET and POST are accepted by a route
for (const m of ['PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'HEAD', 'PROPFIND', 'FOO', 'GETT', 'get', 'post'])
  add(m, chat([], { line: `${m} /v1/chat/completions HTTP/1.1` }), reject());
add('CONNECT', R('CONNECT corpus.test:443 HTTP/1.1', [HOST, AUTH]), reject());
add('OPTIONS-asterisk', R('OPTIONS * HTTP/1.1', [HOST]), reject());
add('bad-token-paren', models([], { line: 'G(T /v1/models HTTP/1.1' }), reject());
add('bad-token-at', models([], { line: 'GE@T /v1/models HTTP/1.1' }), reject());
add('bad-token-utf8', models([], { line: 'G\xc3\x89T /v1/models HTTP/1.1' }), reject());
add('method-long', models([], { line: `${'X'.repeat(200)} /v1/models HTTP/1.1` }), reject());
add('h2-preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', reject([400, 505]));
add('get-chat', models([], { line: 'GET /v1/chat/completions HTTP/1.1' }), local(405), { why: 'a known path, the wrong method: 405, kept alive' });
add('get-completions', models([], { line: 'GET /v1/completions HTTP/1.1' }), local(405));
add('get-embeddings', models([], { line: 'GET /v1/embeddings HTTP/1.1' }), local(405));
add('post-models-empty', models(['Content-Length: 0'], { line: 'POST /v1/models HTTP/1.1' }), local(405));
add('post-models-body', chat([], { line: 'POST /v1/models HTTP/1.1', body: '{chat}' }), { status: 405, conn: 'any', upstream: 0 },
  { why: 'if kept alive, the body must have been read: the follow-up is answered' });
add('get-unknown-path', models([], { line: 'GET /v1/unknown HTTP/1.1' }), local(404));
add('post-unknown-path', models(['Content-Length: 0'], { line: 'POST /v1/unknown HTTP/1.1' }), local(404));
add('public-healthz', models([], { line: 'GET /healthz HTTP/1.1' }), local(404), { why: 'issue point 5: /healthz is on the admin listener only' });
add('public-metrics', models([], { line: 'GET /metrics HTTP/1.1' }), local(404), { why: 'issue point 5: /metrics is on the admin listener only' });

// ---------------------------------------------------------------------------------------------
category = 'targets'; // origin-form of RFC 3986 characters (absolute-form accepted, RFC 9112 §3.2.2)
const badTarget = { space: ' ', quote: '"', lt: '<', gt: '>', backslash: '\\', 'brace-open': '{', 'brace-close': '}', caret: '^', backtick: '`', pipe: '|',
  'bracket-open': '[', 'bracket-close': ']', hash: '#', tab: '\t', del: '\x7f', 'utf8-e-acute': '\xc3\xa9', 'latin1-byte': '\xe9', 'pct-bad-hex': '%zz', 'pct-one-digit': '%4g',
  'pct-truncated': '%', nul: '\x00' };
for (const [name, ch] of Object.entries(badTarget))
  add(`query-${name}`, models([], { line: `GET /v1/models?q=a${ch}b HTTP/1.1` }), reject());
add('path-space', models([], { line: 'GET /v1/mo dels HTTP/1.1' }), reject());
add('path-backslash', models([], { line: 'GET /v1\\models HTTP/1.1' }), reject());
add('path-utf8', models([], { line: 'GET /v1/mod\xc3\xa9ls HTTP/1.1' }), reject());
add('path-pct-bad', chat([], { line: 'POST /v1/chat/%zzcompletions HTTP/1.1' }), reject());
add('path-pipe-post', chat([], { line: 'POST /v1/chat/completions|x HTTP/1.1' }), reject());
add('query-all-allowed', models([], { line: "GET /v1/models?a=b&c=%20%7E&d=-._~!$'()*+,;=:@/? HTTP/1.1" }), local());
add('absolute-form-http', chat([], { line: 'POST http://corpus.test/v1/chat/completions HTTP/1.1' }), forwarded(),
  { why: 'RFC 9112 §3.2.2: a server MUST accept the absolute-form' });
add('absolute-form-https', models([], { line: 'GET https://corpus.test/v1/models HTTP/1.1' }), local());
add('absolute-form-host-mismatch', models([], { line: 'GET http://elsewhere.test:8080/v1/models?x=1 HTTP/1.1' }), local(),
  { why: 'RFC 9112 §3.2.2: the Host field is ignored for the absolute-form' });
add('absolute-form-no-path', models([], { line: 'GET http://corpus.test HTTP/1.1' }), local(404));
add('absolute-form-bad-char', models([], { line: 'GET http://corpus.test/v1/models?q=<x> HTTP/1.1' }), reject());
add('asterisk-get', models([], { line: 'GET * HTTP/1.1' }), reject());
add('authority-form-get', models([], { line: 'GET corpus.test:443 HTTP/1.1' }), reject());
add('relative-path', models([], { line: 'GET v1/models HTTP/1.1' }), reject());
add('empty-target', models([], { line: 'GET  HTTP/1.1' }), reject());
add('double-space', models([], { line: 'GET  /v1/models HTTP/1.1' }), reject(), { why: 'RFC 9112 §3: single SP (lenient parsing MAY, at a smuggling risk)' });
add('tab-separators', models([], { line: 'GET\t/v1/models\tHTTP/1.1' }), reject());
add('leading-space', models([], { line: ' GET /v1/models HTTP/1.1' }), reject());

// ---------------------------------------------------------------------------------------------
category = 'versions';
add('http-2.0', models([], { line: 'GET /v1/models HTTP/2.0' }), reject(505), { why: 'RFC 9110 §15.6.6' });
add('http-3.0', models([], { line: 'GET /v1/models HTTP/3.0' }), reject(505));
add('http-0.9', models([], { line: 'GET /v1/models HTTP/0.9' }), reject(505));
add('http-9.9', models([], { line: 'GET /v1/models HTTP/9.9' }), reject(505));
add('http-2.0-post', chat([], { line: 'POST /v1/chat/completions HTTP/2.0' }), reject(505));
// RFC 9110 §2.5: a higher minor version of 1.x SHOULD be processed as 1.1 (200); refusing it as
// a version other than 1.0/1.1 is 505. A 400 is neither.
add('http-1.2', models([], { line: 'GET /v1/models HTTP/1.2' }), { status: [200, 505], conn: 'any', upstream: 0 },
  { why: 'RFC 9110 §2.5 (SHOULD process as 1.1) or 505 for a version other than 1.0/1.1' });
add('http-1.9-post', chat([], { line: 'POST /v1/chat/completions HTTP/1.9' }), { status: [200, 505], conn: 'any', upstream: { 200: 1, 505: 0 } });
add('http-0.9-style', models([], { line: 'GET /v1/models' }), reject([400, 505]));
add('lowercase-name', models([], { line: 'GET /v1/models http/1.1' }), reject(), { why: 'HTTP-name is case-sensitive' });
add('no-minor', models([], { line: 'GET /v1/models HTTP/1' }), reject([400, 505]));
add('two-digit-minor', models([], { line: 'GET /v1/models HTTP/1.10' }), reject([400, 505]));
add('no-dot', models([], { line: 'GET /v1/models HTTP/11' }), reject([400, 505]));
add('trailing-space', models([], { line: 'GET /v1/models HTTP/1.1 ' }), reject());
add('space-in-version', models([], { line: 'GET /v1/models HTTP/ 1.1' }), reject());
add('garbage-name', models([], { line: 'GET /v1/models FOO/1.1' }), reject());
add('garbage-line', R('XYZ', [HOST]), reject());
add('http10-keep-alive', models(['Connection: keep-alive'], { line: 'GET /v1/models HTTP/1.0' }), local(200, { conn: 'any', closeHeader: false }));

// ---------------------------------------------------------------------------------------------
category = 'get-body'; // a GET with a body is answered, then closed: the body is never a request
add('models-cl-body-request', models(['Content-Length: {rest.len}'], { body: '{models}' }), local(200, { conn: 'closed' }));
add('models-cl-body-smuggled-chat', models(['Content-Length: {rest.len}'], { body: '{smuggle}' }), local(200, { conn: 'closed' }));
add('models-chunked-body-smuggled-chat', models(['Transfer-Encoding: chunked'], { body: '{smuggle.chunked}' }), local(200, { conn: 'closed' }));
add('models-chunked-empty', models(['Transfer-Encoding: chunked'], { body: '0\r\n\r\n{smuggle}' }), local(200, { conn: 'closed' }),
  { why: 'RFC 9112 §6: Transfer-Encoding signals a body (here empty): answered with Connection: close' });
add('models-cl-0', models(['Content-Length: 0']), local(200, { conn: 'any' }), { why: 'no body bytes: keeping the connection is fine' });
add('models-http10-body', models(['Content-Length: {rest.len}'], { line: 'GET /v1/models HTTP/1.0', body: '{smuggle}' }), local(200, { conn: 'closed' }));
add('get-chat-with-body', models(['Content-Length: {rest.len}'], { line: 'GET /v1/chat/completions HTTP/1.1', body: '{smuggle}' }),
  { status: 405, conn: 'any', upstream: 0 });

// ---------------------------------------------------------------------------------------------
category = 'pipelining'; // several valid requests in one write, answered in order
add('two-models', models() + models(), { responses: [200, 200], conn: 'open', upstream: 0 });
add('ten-models', models().repeat(10), { responses: Array(10).fill(200), conn: 'open', upstream: 0 });
add('models-then-chat', models() + chat(), { responses: [200, 200], conn: 'open', upstream: 1, path: CHAT });
add('two-chats', chat() + chat(), { responses: [200, 200], conn: 'open', upstream: 2, path: CHAT });
add('chat-embeddings-completions', chat() + R('POST /v1/embeddings HTTP/1.1', [HOST, AUTH, CT, 'Content-Length: {embedding.len}'], '{embedding}') +
  R('POST /v1/completions HTTP/1.1', [HOST, AUTH, CT, 'Content-Length: {completion.len}'], '{completion}'), { responses: [200, 200, 200], conn: 'open', upstream: 3 });
add('stream-then-chat', chat([], { body: '{chat_stream}', cl: 'Content-Length: {chat_stream.len}' }) + chat(), { responses: [200, 200], conn: 'open', upstream: 2, path: CHAT });
add('chunked-then-cl', chatChunked() + chat(), { responses: [200, 200], conn: 'open', upstream: 2, path: CHAT });
add('valid-then-duplicate-cl', chat() + chat(['Content-Length: {chat.len}']), { responses: [200, 400], conn: 'closed', upstream: 1, path: CHAT });
add('valid-then-garbage', chat() + 'XYZ\r\n\r\n', { responses: [200, 400], conn: 'closed', upstream: 1, path: CHAT });
add('connection-close-then-smuggle', chat(['Connection: close']) + '{smuggle}', { responses: [200], conn: 'closed', upstream: 1, path: CHAT },
  { why: 'nothing after a Connection: close request is read' });
add('http10-then-smuggle', chat([], { line: 'POST /v1/chat/completions HTTP/1.0' }) + '{smuggle}', { responses: [200], conn: 'closed', upstream: 1, path: CHAT });
add('head-in-three-parts', ['POST /v1/chat/compl', 'etions HTTP/1.1\r\nHost: {host}\r\nAuthor', `ization: Bearer {key}\r\n${CT}\r\nContent-Length: {chat.len}\r\n\r\n{chat}`], forwarded());

// ---------------------------------------------------------------------------------------------
category = 'continue'; // Expect: 100-continue
add('chat', [chat(['Expect: 100-continue'], { body: '' }), '{chat}'], forwarded(CHAT, { continue: true }));
add('chat-mixed-case', [chat(['Expect: 100-Continue'], { body: '' }), '{chat}'], forwarded(CHAT, { continue: true }));
add('chat-chunked', [chat(['Expect: 100-continue', 'Transfer-Encoding: chunked'], { cl: null, body: '' }), '{chat.chunked}'], forwarded(CHAT, { continue: true }));
add('body-without-waiting', chat(['Expect: 100-continue']), forwarded(), { why: 'a client may send the body at once' });
add('over-limit', chat(['Expect: 100-continue'], { cl: 'Content-Length: 10485761', body: '' }), reject(413, { noContinue: true }),
  { why: 'refused from the head: no 100 Continue, no body read' });
add('bad-key', chat(['Expect: 100-continue'], { auth: 'Authorization: Bearer tg_000000000000000000000000000000000000aa', body: '' }),
  { status: 401, conn: 'closed', upstream: 0, noContinue: true }, { why: 'answered before the body: the unread body ends the connection' });

// ---------------------------------------------------------------------------------------------
category = 'body-limit'; // server.max_body_bytes = 10 MiB
add('cl-limit-plus-1', chat([], { cl: 'Content-Length: 10485761', body: '{chat}' }), reject(413));
add('cl-100m', chat([], { cl: 'Content-Length: 104857600', body: '{chat}' }), reject(413));
add('cl-limit-plus-1-models', models(['Content-Length: 10485761'], { body: 'x' }), reject([413, 200]),
  { why: 'refused for its size, or answered and closed without reading the body' });
add('cl-limit-plus-1-sent', chat([], { cl: 'Content-Length: 10485761', body: ' '.repeat(10485761 - 2) + '{}' }), reject(413),
  { why: 'the whole oversized body is sent: the 413 must still reach the client' });

export default cases;
