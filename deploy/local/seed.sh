#!/usr/bin/env bash
# Seeds a local tollgate database for the quickstart (idempotent):
#   - model prices from the upstream's OpenRouter-style GET /models (USD-per-token strings)
#   - a default pricing rule ('*', 20 % markup) if there is no rule yet
#   - a demo account with $5, and an API key written to KEY_FILE (reused while it is active)
# Usage: seed.sh UPSTREAM_URL UPSTREAM_KEY KEY_FILE   (TOLLGATE_DATABASE_URL must be set)
set -euo pipefail
upstream=$1 upstream_key=$2 key_file=$3
tg="$(dirname "$0")/../../build/bin/tollgate"
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 "$TOLLGATE_DATABASE_URL" "$@"; }

# Prices: one JSON document, loaded through COPY (csv with unused quote/delimiter characters
# leaves backslashes in the JSON alone). Models without a fixed per-token price are skipped.
curl -fsS --max-time 30 -H "Authorization: Bearer $upstream_key" "$upstream/models" | tr -d '\n' |
  q -c "CREATE TEMP TABLE upstream_models (doc jsonb)" \
    -c "\\copy upstream_models FROM pstdin WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')" \
    -c "INSERT INTO model_prices (model, prompt_price, completion_price, context_length)
        SELECT m->>'id', (m->'pricing'->>'prompt')::numeric, (m->'pricing'->>'completion')::numeric,
               (m->>'context_length')::int
        FROM upstream_models, jsonb_array_elements(doc->'data') m
        WHERE m->'pricing'->>'prompt' ~ '^[0-9]+(\.[0-9]+)?$' AND m->'pricing'->>'completion' ~ '^[0-9]+(\.[0-9]+)?$'
        ON CONFLICT (model) DO UPDATE SET prompt_price = EXCLUDED.prompt_price,
          completion_price = EXCLUDED.completion_price, context_length = EXCLUDED.context_length,
          updated_at = now()
        WHERE (model_prices.prompt_price, model_prices.completion_price)
              IS DISTINCT FROM (EXCLUDED.prompt_price, EXCLUDED.completion_price)"
echo "seed: $(q -c 'SELECT count(*) FROM model_prices') priced models" >&2

q -c "INSERT INTO pricing_rules (model_pattern, markup_percentage, min_cost_usd, priority)
      SELECT '*', 20, 0, 0 WHERE NOT EXISTS (SELECT 1 FROM pricing_rules)"

email=demo@tollgate.local
if [ -z "$(q -c "SELECT id FROM users WHERE email = '$email'")" ]; then
  "$tg" accounts create "$email" >/dev/null
  "$tg" credits add "$email" 5 --note "quickstart demo credit" >/dev/null
fi
if [ -s "$key_file" ] && "$tg" keys list "$email" | grep -q "$(cut -c1-11 "$key_file") *active"; then
  echo "seed: reusing the demo key in $key_file" >&2
else
  "$tg" keys create "$email" --name quickstart 2>/dev/null >"$key_file"
  chmod 600 "$key_file"
  echo "seed: new demo key written to $key_file" >&2
fi
