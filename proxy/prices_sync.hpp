#pragma once
// `tollgate prices sync --from BASE_URL [--only GLOB]`: fills model_prices from an
// OpenRouter-style upstream's `GET {BASE_URL}/models` (OpenRouter API reference: `data[]` with
// `id`, `name`, `context_length` and `pricing`, each price a decimal string in USD per token or
// unit: prompt, completion, request, image (per image input), web_search, internal_reasoning,
// input_cache_read, input_cache_write, image_output (per image-output token)). The price per
// generated image (model_prices.image_generation_price) is not in that list: operators set it in
// SQL, and a sync leaves it alone. Every instance reloads the prices on NOTIFY.
#include "sql/pg.hpp"

#include <cstddef>
#include <string>

namespace tollgate {

/// What a sync did.
struct PricesSyncResult {
  std::size_t upserted = 0;  ///< models whose prices were written
  std::size_t skipped = 0;   ///< models left out: no or negative prompt/completion price (OpenRouter's
                             ///< "-1" for routers priced per call), more than 12 decimals, or no match
};

/// Fetches `base_url`/models (HTTPS with certificate verification and SNI, or plain HTTP; 30 s,
/// 64 MiB at most) and upserts, in one transaction, every model matching `only` (a glob; empty:
/// all). A component OpenRouter lists as "0" for cache read, cache write, internal reasoning or
/// image output is stored NULL (not priced separately: the prompt or completion price applies,
/// or for image output the upstream's usage.cost), which can only charge more, never less. The
/// model's `name` is stored as model_prices.name (absent or empty: the name it had is kept). Throws std::runtime_error for a failed fetch or a body that is not
/// an OpenRouter model list, std::invalid_argument for a bad URL; writes nothing then.
PricesSyncResult sync_prices(sql::PgConn& db, const std::string& base_url, const std::string& only);

}  // namespace tollgate
