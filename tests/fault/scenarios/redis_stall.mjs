// Redis stalls under load (the server process stopped with SIGSTOP for 1.5 s, then SIGCONT):
// every admission in flight gets no answer within the 50 ms deadline and is answered 503, yet
// Redis runs the ones already in its socket when it resumes, placing their holds. Each must be
// released by request id as soon as Redis answers again; and expired holds are swept at rest.
// hold_ttl is test-sized (5 s) for this scenario: 0 holds left at rest right after the stall,
// and after 2 × hold_ttl. Meanwhile a second instance serving 10 streams of another account is
// killed (kill -9): nothing requests that account again, so only the sweep at rest (by the
// surviving instance) releases its 10 holds once they expire.
import { performance } from 'node:perf_hooks';
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { agent, chatBody, load, send, statusCounts } from '../lib/client.mjs';
import { redis, sleep, startStub, startTollgate } from '../lib/procs.mjs';
import { quiesce } from './kill9.mjs';

const STALL_MS = 1500;
const HOLD_TTL_MS = 5000;

/** The suite's Redis server process id. */
export async function redisPid() {
  const info = (await redis('INFO', 'server')).join('\n');
  return Number(/process_id:(\d+)/.exec(info)[1]);
}

/** Stops the Redis server process for `ms` (SIGSTOP … SIGCONT). */
export async function stallRedis(ms) {
  const pid = await redisPid();
  process.kill(pid, 'SIGSTOP');
  try {
    await sleep(ms);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
}

export default {
  name: 'redis_stall',
  about: `Redis stopped (SIGSTOP) for ${STALL_MS / 1000} s under load; hold_ttl ${HOLD_TTL_MS / 1000} s`,
  async run(report) {
    const ns = new Namespace('rs');
    await ns.setup();
    try {
      const acct = await ns.account({ dollars: '1000' });
      const crashed = await ns.account({ dollars: '10' });
      const stub = await startStub();
      const config = `[admission]\nhold_ttl_ms = ${HOLD_TTL_MS}\n`;
      const tg = await startTollgate({ upstreamUrl: stub.apiUrl, config });
      const stubB = await startStub();
      const tgB = await startTollgate({ name: 'tollgate-b', upstreamUrl: stubB.apiUrl, config });
      const model = ns.model();
      const agB = agent({ maxSockets: 16 });
      const streamsB = Array.from({ length: 10 }, () => send({ base: tgB.url, key: crashed.key, agent: agB, timeoutMs: 30_000,
        body: chatBody(model, { stream: true, maxTokens: 60, chunks: 60, intervalMs: 200 }) }));
      await sleep(1000);
      const crashedHolds = (await accountState(crashed.id)).redis.holds;
      tgB.child.proc.kill('SIGKILL');
      await tgB.child.exit;
      const tKill = performance.now();
      await Promise.all(streamsB);
      agB.destroy();
      const ag = agent({ maxSockets: 32 });
      await stub.reset();
      const L = load({
        workers: 24,
        next: (w, n) => ({
          base: tg.url, key: acct.key, agent: ag, timeoutMs: 10_000,
          body: (w + n) % 4 ? chatBody(model, { chunks: 8, latencyMs: 5 }) : chatBody(model, { stream: true, chunks: 4, intervalMs: 5 }),
        }),
      });
      await sleep(2000);
      const s0 = performance.now() - L.t0;
      await stallRedis(STALL_MS);
      const s1 = performance.now() - L.t0;
      await sleep(2000);
      await L.stop();
      ag.destroy();
      const tStop = performance.now();
      const rows = await quiesce([tg], acct.id);
      await sleep(500);
      const atRest = await accountState(acct.id);
      const restMs = performance.now() - tStop;
      await sleep(Math.max(0, 2 * HOLD_TTL_MS - (performance.now() - s1 - L.t0), 2 * HOLD_TTL_MS - (performance.now() - tKill)));
      const later = await accountState(acct.id);
      const crashedLater = await accountState(crashed.id);
      const upstream = await stub.requests();
      const during = L.results.filter((r) => r.t >= s0 - 100 && r.t < s1);

      report.figure('command', 'bash tests/fault/run.sh redis_stall');
      report.figure('statuses: before / around the stall / after', `${statusCounts(L.results.filter((r) => r.t < s0 - 100))} / ` +
        `${statusCounts(during)} / ${statusCounts(L.results.filter((r) => r.t >= s1))}`);
      report.figure('requests the upstream answered / usage rows', `${upstream} / ${rows}`);
      report.figure(`at rest (${(restMs / 1000).toFixed(1)} s after the load stopped)`, describeState(atRest));
      report.figure(`2 × hold_ttl after the stall`, describeState(later));
      report.figure('the killed instance\'s account: holds at the kill / 2 × hold_ttl after',
        `${crashedHolds} / ${crashedLater.redis.holds} (${usd(crashedLater.redis.held)} held)`);
      report.check('0 usage records lost', rows === upstream, `${upstream - rows} of ${upstream} missing`);
      report.check('no hold left at rest right after the stall (released by request id)', atRest.redis.holds === 0 && atRest.redis.held === 0n,
        `${atRest.redis.holds} holds, ${usd(atRest.redis.held)} held`);
      report.check('no hold left 2 × hold_ttl after the stall', later.redis.holds === 0 && later.redis.held === 0n,
        `${later.redis.holds} holds, ${usd(later.redis.held)} held`);
      report.check('the killed instance\'s 10 holds are swept at rest within 2 × hold_ttl (no request on that account)',
        crashedHolds === 10 && crashedLater.redis.holds === 0 && crashedLater.redis.held === 0n,
        `${crashedHolds} holds at the kill, ${crashedLater.redis.holds} left (${usd(crashedLater.redis.held)})`);
      report.check("Redis = Postgres afterwards (nothing pending), conservation", later.redisAgrees && later.conserved && later.usageMatches,
        describeState(later));
    } finally {
      await ns.drop();
    }
  },
};
