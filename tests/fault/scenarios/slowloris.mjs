// Slowloris: 1,000 connections from 127.0.0.1, each sending a request head 1 byte a second.
// p50/p99 of normal requests (from 127.0.0.2: the per-address connection cap applies to the
// attacker's address only) without and with them, and how many the server closed, and when.
import { connect } from 'node:net';
import { performance } from 'node:perf_hooks';
import { Namespace } from '../lib/accounts.mjs';
import { agent, chatBody, fmtMs, pct, send, statusCounts } from '../lib/client.mjs';
import { sleep, startStub, startTollgate } from '../lib/procs.mjs';

const CONNECTIONS = 1000;
const OBSERVE_MS = Number(process.env.FAULT_SLOWLORIS_OBSERVE_MS || 20_000);
const HEADER_TIMEOUT_MS = 10_000;  // server.header_timeout_ms default (issue 10 point 3)
const SAMPLES = 2000;

/** SAMPLES requests, 2 at a time, from 127.0.0.2; returns their results. */
async function measure(base, key, model) {
  const ag = agent({ maxSockets: 2, localAddress: '127.0.0.2' });
  const out = [];
  let started = 0;
  await Promise.all([0, 1].map(async () => {
    while (started++ < SAMPLES) out.push(await send({ base, key, agent: ag, body: chatBody(model), timeoutMs: 10_000 }));
  }));
  ag.destroy();
  return out;
}

/** One slow client: connects, then writes one byte of `head` per tick. */
function slowClient(port, t0, stats) {
  const c = { opened: NaN, closed: NaN, reply: '', sent: 0, error: null };
  const s = connect({ port, host: '127.0.0.1', localAddress: '127.0.0.1' });
  s.setNoDelay(true);
  s.on('connect', () => { c.opened = performance.now() - t0; });
  s.on('data', (d) => { if (c.reply.length < 200) c.reply += d.toString('latin1'); });
  s.on('error', (e) => { c.error = e.code || e.message; });
  s.on('close', () => { c.closed = performance.now() - t0; });
  c.socket = s;
  stats.push(c);
  return c;
}

export default {
  name: 'slowloris',
  about: `${CONNECTIONS} connections sending a request head 1 byte/s; latency of normal requests without and with them`,
  async run(report) {
    const ns = new Namespace('sl');
    await ns.setup();
    try {
      const acct = await ns.account({ dollars: '100' });
      const stub = await startStub();
      const tg = await startTollgate({ upstreamUrl: stub.apiUrl });
      const model = ns.model();
      const port = Number(new URL(tg.url).port);
      await measure(tg.url, acct.key, model);  // warm-up (key cache, connections, JIT)
      const before = await measure(tg.url, acct.key, model);

      const head = `POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${acct.key}\r\n` +
        `Content-Type: application/json\r\nX-Slow: ${'a'.repeat(200)}\r\n\r\n`;
      const t0 = performance.now();
      const slow = [];
      for (let i = 0; i < CONNECTIONS; ++i) {
        slowClient(port, t0, slow);
        if (i % 50 === 49) await sleep(10);
      }
      const tick = setInterval(() => {
        for (const c of slow) {
          if (Number.isNaN(c.closed) && !Number.isNaN(c.opened) && c.sent < head.length) c.socket.write(head[c.sent++]);
        }
      }, 1000);
      await sleep(2000);
      const duringStart = performance.now() - t0;
      const during = await measure(tg.url, acct.key, model);
      const duringEnd = performance.now() - t0;
      await sleep(Math.max(0, OBSERVE_MS - (performance.now() - t0)));
      clearInterval(tick);
      const observed = performance.now() - t0;
      const opened = slow.filter((c) => !Number.isNaN(c.opened));
      const closed = opened.filter((c) => !Number.isNaN(c.closed));
      const life = closed.map((c) => c.closed - c.opened);
      const atAccept = life.filter((l) => l < 1000).length;
      const byTimeout = closed.filter((c) => c.closed - c.opened >= 1000);
      const replies = {};
      for (const c of closed) {
        const k = /^HTTP\/1\.1 (\d{3})/.exec(c.reply)?.[1] || (c.error ? `closed (${c.error})` : 'closed, no answer');
        replies[k] = (replies[k] || 0) + 1;
      }
      for (const c of slow) c.socket.destroy();
      const alive = tg.child.exited === null;

      const lat = (rs) => `p50 ${fmtMs(pct(rs.map((r) => r.ms), 0.5))}, p99 ${fmtMs(pct(rs.map((r) => r.ms), 0.99))} (${statusCounts(rs)})`;
      report.figure('command', 'bash tests/fault/run.sh slowloris');
      report.figure(`normal requests without slowloris (${SAMPLES}, 2 at a time, from 127.0.0.2)`, lat(before));
      report.figure(`normal requests with ${CONNECTIONS} slow connections open`, `${lat(during)}; measured ${(duringStart / 1000).toFixed(1)}–${(duringEnd / 1000).toFixed(1)} s into the attack`);
      report.figure('slow connections established', `${opened.length} of ${CONNECTIONS}`);
      report.figure(`closed by the server within ${(observed / 1000).toFixed(1)} s`,
        `${closed.length}: ${atAccept} within 1 s of connecting (connection cap), ${byTimeout.length} later` +
        (byTimeout.length ? ` (after ${fmtMs(pct(byTimeout.map((c) => c.closed - c.opened), 0))} … ${fmtMs(pct(byTimeout.map((c) => c.closed - c.opened), 1))}, p50 ${fmtMs(pct(byTimeout.map((c) => c.closed - c.opened), 0.5))})` : ''));
      report.figure('what the closed ones got', JSON.stringify(replies));
      report.figure('still open at the end (bytes sent each)', `${opened.length - closed.length} (≤ ${Math.ceil(observed / 1000)} bytes of a ${head.length}-byte head)`);
      report.check('normal requests all answered 200 during the attack', during.every((r) => r.status === 200), statusCounts(during));
      report.check(`every slow head closed by the header timeout (${HEADER_TIMEOUT_MS / 1000} s + 2 s)`,
        opened.length > 0 && opened.every((c) => !Number.isNaN(c.closed) && c.closed - c.opened <= HEADER_TIMEOUT_MS + 2000),
        `${opened.length - closed.length} still open after ${(observed / 1000).toFixed(1)} s; ${byTimeout.filter((c) => c.closed - c.opened > HEADER_TIMEOUT_MS + 2000).length} closed later than 12 s`,
        'issue 10 point 3: the 10 s total header deadline is the lead\'s session rewrite; before it a head may take client_idle_timeout (60 s)');
      report.check('tollgate still running', alive, JSON.stringify(tg.child.exited));
    } finally {
      await ns.drop();
    }
  },
};
