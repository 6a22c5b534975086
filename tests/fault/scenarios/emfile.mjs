// The open-file limit (issue 11): tollgate runs with 1,024 descriptors (soft = hard) and 2,000
// connections arrive from 8 source addresses and stay open. accept(2) fails with EMFILE once the
// descriptors are gone; tollgate must keep serving the connections it has, answer the ones it
// cannot take (503 through its reserve descriptor) instead of leaving them in the backlog, spend
// bounded CPU (no accept busy-loop) and write bounded logs, and accept again once descriptors
// are free.
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Namespace } from '../lib/accounts.mjs';
import { agent, chatBody, load, pct, send, statusCounts, fmtMs } from '../lib/client.mjs';
import { sleep, startStub, startTollgate } from '../lib/procs.mjs';

const NOFILE = 1024, CONNECTIONS = 2000, OBSERVE_MS = 8000;

/** CPU seconds (user + system) of a process, from /proc/PID/stat. */
function cpuSeconds(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100;  // utime, stime in clock ticks (USER_HZ 100)
}

/** Opens one idle connection from `localAddress`; resolves {socket, got503} once connected. */
function idle(port, localAddress) {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress });
    const c = { socket: s, connected: false, got503: false, closed: false };
    s.on('connect', () => { c.connected = true; resolve(c); });
    s.on('data', (d) => { if (/^HTTP\/1\.1 503/.test(d.toString())) c.got503 = true; });
    s.on('error', () => {});
    s.on('close', () => { c.closed = true; resolve(c); });
    setTimeout(() => resolve(c), 5000);
  });
}

export default {
  name: 'emfile',
  about: `tollgate with ${NOFILE} descriptors and ${CONNECTIONS} connections held open: still serving, bounded CPU and logs`,
  async run(report) {
    const ns = new Namespace('fd');
    await ns.setup();
    const held = [];
    try {
      const acct = await ns.account({ dollars: '100' });
      const stub = await startStub();
      const tg = await startTollgate({ upstreamUrl: stub.apiUrl, nofile: NOFILE, config: '[server]\nthreads = 2\n' });
      const model = ns.model();
      // 4 clients on connections opened before the flood (and upstream connections pooled).
      const ag = agent({ maxSockets: 4 });
      const warm = await Promise.all([0, 1, 2, 3].map(() => send({ base: tg.url, key: acct.key, agent: ag, body: chatBody(model) })));
      const port = Number(new URL(tg.url).port);

      for (let i = 0; i < CONNECTIONS; ++i) held.push(idle(port, `127.0.0.${2 + (i % 8)}`));
      const conns = await Promise.all(held);
      const L = load({ workers: 4, next: () => ({ base: tg.url, key: acct.key, agent: ag, timeoutMs: 5000, body: chatBody(model) }) });
      const cpu0 = cpuSeconds(tg.child.pid), t0 = performance.now();
      await sleep(OBSERVE_MS);
      const cpu = (cpuSeconds(tg.child.pid) - cpu0) / ((performance.now() - t0) / 1000);
      await L.stop();
      // At the limit with no requests: a busy accept loop would burn a core here (the issue saw 140 %).
      const idle0 = cpuSeconds(tg.child.pid), ti = performance.now();
      await sleep(2000);
      const idleCpu = (cpuSeconds(tg.child.pid) - idle0) / ((performance.now() - ti) / 1000);
      const refused503 = conns.filter((c) => c.got503).length;
      const open = conns.filter((c) => c.connected && !c.closed).length;
      for (const c of conns) c.socket.destroy();
      await sleep(500);
      const m = await tg.metrics();  // the admin listener is refused too while at the limit
      const after = await send({ base: tg.url, key: acct.key, body: chatBody(model) });  // a new connection
      ag.destroy();

      const log = tg.child.log;
      const acceptLines = (log.match(/accept:/g) || []).length;
      const logLines = log.split('\n').length;
      const res = L.results;
      const ok = res.filter((r) => r.status === 200);
      const slow = res.filter((r) => r.ms > 1000);

      report.figure('command', 'bash tests/fault/run.sh emfile');
      report.figure('warm-up', statusCounts(warm));
      report.figure(`held connections (of ${CONNECTIONS})`, `${open} open at the end, ${refused503} answered 503 and closed, ${conns.filter((c) => !c.connected).length} never connected`);
      report.figure('accept failures (tollgate_accept_out_of_descriptors_total)', m['tollgate_accept_out_of_descriptors_total']);
      report.figure('connections refused (total cap + out of descriptors)', m['tollgate_connections_refused_total{cap="total"}']);
      report.figure(`normal requests during ${OBSERVE_MS / 1000} s`, `${res.length}: ${statusCounts(res)}; p50 ${fmtMs(pct(ok.map((r) => r.ms), 0.5))}, p99 ${fmtMs(pct(ok.map((r) => r.ms), 0.99))}`);
      report.figure('slow requests (> 1 s)', slow.map((r) => `${r.status || r.error} ${r.ms.toFixed(0)} ms at ${r.t.toFixed(0)} ms${r.requestId ? ` ${r.requestId}` : ''}`).join('; ') || 'none');
      report.figure('tollgate CPU at the limit', `${(cpu * 100).toFixed(1)} % of one core serving the requests above, ${(idleCpu * 100).toFixed(1)} % with no requests`);
      report.figure('log', `${logLines} lines, ${acceptLines} about accept`);
      report.figure('a new connection after they closed', statusCounts([after]));
      report.check('the limit was hit', (m['tollgate_accept_out_of_descriptors_total'] || 0) > 0, 'no EMFILE: raise CONNECTIONS or lower NOFILE');
      // A request that needs a new descriptor (a client connection replaced after
      // max_requests_per_connection, one more upstream connection than the pool holds) gets an
      // honest, immediate 503 `overloaded`; nothing waits, nothing is misreported as the upstream's.
      const other = res.filter((r) => r.status !== 200 && !(r.status === 503 && r.code === 'overloaded'));
      report.check('responsive: every normal request answered within 1 s, 200 or 503 overloaded; most 200',
        res.length > 1000 && other.length === 0 && slow.length === 0 && ok.length >= 0.8 * res.length,
        `${statusCounts(res)}; ${slow.length} over 1 s`);
      report.check('no busy loop: < 5 % of a core at the limit with no requests', idleCpu < 0.05, `${(idleCpu * 100).toFixed(1)} %`);
      report.check('bounded logs (≤ 10 accept lines)', acceptLines <= 10, `${acceptLines} lines`);
      report.check('connections it cannot take are answered 503, not left hanging', refused503 > 0, `${refused503} got 503`);
      report.check('accepts again once descriptors are free', after.status === 200, statusCounts([after]));
    } finally {
      for (const p of held) p.then((c) => c.socket.destroy());
      await ns.drop();
    }
  },
};
