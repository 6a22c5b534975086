// `tollgate prices sync --from URL` (issue 12 §3) against the stub's OpenRouter-shaped /models:
// every price component lands in model_prices, "0" cache/reasoning prices are stored NULL (not
// priced separately), --only filters by glob, and a failed fetch writes nothing.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { closedPort, psql, psqlJson, tollgate, useHarness } from './harness.js';

const h = useHarness();

test('prices sync fills every component from an upstream /models, "0" components as NULL, --only by glob', async () => {
  const stub = await h.startStub({ name: 'catalogue' });
  await psql("DELETE FROM model_prices WHERE model IN ('openai/gpt-4o', 'anthropic/claude-3.5-sonnet', 'openai/dall-e-3', 'openai/gpt-image-1')");
  const out = await tollgate('prices', 'sync', '--from', `${stub.url}/api/v1`, '--only', 'openai/gpt-4o');
  assert.match(out.stdout, /^1 model price\(s\) synced, 0 skipped/);
  const out2 = await tollgate('prices', 'sync', '--from', `${stub.url}/api/v1`, '--only', '*claude-3.5*');
  assert.match(out2.stdout, /^1 model price\(s\) synced/);
  const out3 = await tollgate('prices', 'sync', '--from', `${stub.url}/api/v1`, '--only', 'openai/dall-e-3');
  assert.match(out3.stdout, /^1 model price\(s\) synced/);
  const out4 = await tollgate('prices', 'sync', '--from', `${stub.url}/api/v1`, '--only', 'openai/gpt-image-?');
  assert.match(out4.stdout, /^1 model price\(s\) synced/);
  const rows = await psqlJson(
    "SELECT json_agg(t ORDER BY t.model) FROM (SELECT model, prompt_price::text AS prompt, completion_price::text AS completion, context_length," +
      " input_cache_read_price::text AS cache_read, input_cache_write_price::text AS cache_write," +
      " internal_reasoning_price::text AS reasoning, request_price::text AS request, image_price::text AS image," +
      " image_output_price::text AS image_output, image_generation_price::text AS per_generated_image, name" +
      " FROM model_prices WHERE model IN ('openai/gpt-4o', 'anthropic/claude-3.5-sonnet', 'openai/dall-e-3', 'openai/gpt-image-1')) t",
  );
  // image_output (per image-output token) only where the list prices it; OpenRouter lists no
  // price per generated image (image is per image input): image_generation_price stays NULL.
  assert.deepEqual(rows, [
    { model: 'anthropic/claude-3.5-sonnet', prompt: '0.000003000000', completion: '0.000015000000', context_length: 200000,
      cache_read: '0.000000300000', cache_write: '0.000003750000', reasoning: null, request: null, image: null,
      image_output: null, per_generated_image: null, name: 'Anthropic: Claude 3.5 Sonnet' },
    { model: 'openai/dall-e-3', prompt: '0.000000000000', completion: '0.000000000000', context_length: 4000,
      cache_read: null, cache_write: null, reasoning: null, request: null, image: '0.040000000000',
      image_output: null, per_generated_image: null, name: 'OpenAI: DALL-E 3' },
    { model: 'openai/gpt-4o', prompt: '0.000002500000', completion: '0.000010000000', context_length: 128000,
      cache_read: '0.000001250000', cache_write: null, reasoning: null, request: null, image: null,
      image_output: null, per_generated_image: null, name: 'OpenAI: GPT-4o' },
    { model: 'openai/gpt-image-1', prompt: '0.000005000000', completion: '0.000040000000', context_length: 32000,
      cache_read: '0.000001250000', cache_write: null, reasoning: null, request: null, image: null,
      image_output: '0.000040000000', per_generated_image: null, name: 'OpenAI: GPT Image 1' },
  ]);
  // A sync again leaves what operators set in SQL and when the model was first priced alone:
  // image_generation_price and created_at; a name the list gives replaces the operator's.
  await psql(
    "UPDATE model_prices SET image_generation_price = 0.04, name = 'DALL·E 3 (ours)', created_at = '2024-01-02T03:04:05Z'," +
      " prompt_price = 1 WHERE model = 'openai/dall-e-3'",
  );
  await tollgate('prices', 'sync', '--from', `${stub.url}/api/v1`, '--only', 'openai/dall-e-3');
  const again = await psqlJson(
    "SELECT row_to_json(t) FROM (SELECT prompt_price::text AS prompt, image_generation_price::text AS per_generated_image, name," +
      " extract(epoch FROM created_at)::bigint AS created FROM model_prices WHERE model = 'openai/dall-e-3') t",
  );
  assert.deepEqual(again, { prompt: '0.000000000000', per_generated_image: '0.040000000000', name: 'OpenAI: DALL-E 3',
    created: 1704164645 });
  // A fetch that fails changes nothing and exits non-zero.
  const port = await closedPort();
  await assert.rejects(tollgate('prices', 'sync', '--from', `http://127.0.0.1:${port}/v1`), /Connection refused|connect/);
  const after = await psql("SELECT count(*) FROM model_prices WHERE model = 'openai/gpt-4o'");
  assert.equal(after, '1');
  await psql("DELETE FROM model_prices WHERE model IN ('openai/gpt-4o', 'anthropic/claude-3.5-sonnet', 'openai/dall-e-3', 'openai/gpt-image-1')");
});
