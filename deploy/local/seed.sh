#!/usr/bin/env bash
# Seeds a local tollgate database for the quickstart (idempotent):
#   - model prices from the upstream's OpenRouter-style GET /models (tollgate prices sync)
#   - a default pricing rule ('*', 20 % markup) if there is no rule yet
#   - a demo account with $5, and an API key written to KEY_FILE (reused while it is active)
# Usage: seed.sh UPSTREAM_URL UPSTREAM_KEY KEY_FILE   (TOLLGATE_DATABASE_URL must be set)
set -euo pipefail
upstream=$1 key_file=$3  # $2, the upstream key, is unused: /models needs none
tg="$(dirname "$0")/../../build/bin/tollgate"
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 "$TOLLGATE_DATABASE_URL" "$@"; }

# Prices, every component (cache read/write, reasoning, request, image, web search), from the
# upstream's /models; models without a fixed per-token price are skipped.
"$tg" prices sync --from "$upstream" >&2
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
