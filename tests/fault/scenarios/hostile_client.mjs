// Hostile client (issue 11): requests shaped to be held for less than the upstream serves. A
// cap in both max_tokens and max_completion_tokens (the upstream, like OpenAI, honours
// max_completion_tokens), and a `model` or `max_tokens` given twice (parsers disagree on which
// copy counts). Each on an account holding a few cents: 0 overspend, the billed model is the
// served model, and a refused body never reaches the upstream.
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { send, statusCounts } from '../lib/client.mjs';
import { lit, psql, startStub, startTollgate } from '../lib/procs.mjs';
import { quiesce } from './kill9.mjs';

export default {
  name: 'hostile_client',
  about: 'max_tokens + max_completion_tokens, duplicate model, duplicate max_tokens: 0 overspend, billed model = served model',
  async run(report) {
    const ns = new Namespace('hc');
    // "cheap" and "dear" differ 14× in price, as gpt-4o-mini and gpt-4o do.
    await ns.setup(['cheap']);
    await ns.setup(['dear'], { prompt: '0.000014', completion: '0.000028' });
    try {
      const cheap = ns.model('cheap'), dear = ns.model('dear');
      const stub = await startStub();
      const tg = await startTollgate({ upstreamUrl: stub.apiUrl });
      const msg = '"messages":[{"role":"user","content":"hostile"}]';
      const cases = [
        { name: 'max_tokens 1 + max_completion_tokens 100000', body: `{"model":"${cheap}",${msg},"max_tokens":1,"max_completion_tokens":100000,"stub_chunks":5000}` },
        { name: 'max_completion_tokens 100000 + max_tokens 1, streamed', body: `{"model":"${cheap}",${msg},"max_completion_tokens":100000,"max_tokens":1,"stream":true,"stub_chunks":5000}` },
        { name: 'model twice (cheap, then dear)', body: `{"model":"${cheap}","model":"${dear}",${msg},"max_tokens":50,"stub_chunks":50}` },
        { name: 'model twice (dear, then cheap)', body: `{"model":"${dear}",${msg},"model":"${cheap}","max_tokens":50,"stub_chunks":50}` },
        { name: 'max_tokens twice (1, then 100000)', body: `{"model":"${cheap}",${msg},"max_tokens":1,"max_tokens":100000,"stub_chunks":5000}` },
        { name: 'include_usage twice in stream_options', body: `{"model":"${cheap}",${msg},"stream":true,"stream_options":{"include_usage":false,"include_usage":true},"stub_chunks":5}` },
      ];
      let overspent = 0, mismatched = 0, leaked = 0;
      for (const c of cases) {
        const acct = await ns.account({ dollars: '0.01' });
        await stub.reset();
        const r = await send({ base: tg.url, key: acct.key, body: c.body, timeoutMs: 20_000 });
        await quiesce([tg], acct.id);
        const upstream = await stub.requests();
        const last = upstream ? await (await fetch(`${stub.url}/__stub/last`)).json() : null;
        const sent = last ? JSON.parse(last.body) : null;
        const st = await accountState(acct.id);
        const row = r.requestId ? await psql(`SELECT coalesce(json_build_object('model', model, 'completion', completion_tokens,
            'charged', credits_deducted::text, 'hold', response_metadata->'hold_micros')::text, '') FROM usage_logs WHERE request_id = ${lit(r.requestId)}`) : '';
        const rec = row ? JSON.parse(row) : null;
        if (st.credits < 0n) ++overspent;
        if (rec && sent && rec.model !== sent.model) ++mismatched;
        if (r.status >= 400 && upstream > 0) ++leaked;
        const caps = sent ? `upstream got max_tokens ${sent.max_tokens ?? '-'}, max_completion_tokens ${sent.max_completion_tokens ?? '-'}` : 'upstream got nothing';
        report.figure(c.name, `${statusCounts([r])}; ${caps}; ${rec ? `row ${rec.model.split('/')[1]}, ${rec.completion} completion tokens, charged $${rec.charged}, hold ${usd(BigInt(rec.hold))}` : 'no row'}; balance $0.01 → ${usd(st.credits)}`);
      }
      report.figure('command', 'bash tests/fault/run.sh hostile_client');
      report.check('0 overspend: every balance ≥ −overdraft (0)', overspent === 0, `${overspent} account(s) below 0`);
      report.check('the billed model is the served model', mismatched === 0, `${mismatched} mismatched`);
      report.check('a refused body never reaches the upstream', leaked === 0, `${leaked} reached it`);
    } finally {
      await ns.drop();
    }
  },
};
