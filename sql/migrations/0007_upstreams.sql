-- Upstreams as data (issue 12): where requests go, by model, with fallback. Every instance
-- reloads its route table on NOTIFY tollgate_routes (like tollgate_pricing), so a change here
-- applies without a restart. While model_routes has no rows at all, the configuration's
-- [upstream] (TOLLGATE_UPSTREAM_URL / _KEY) is the one route `*` → upstream `default`.

-- Header names and values an operator may add to every request to an upstream (OpenRouter's
-- HTTP-Referer, X-Title): a JSON object of RFC 9110 token → string without CR, LF or NUL.
-- The names tollgate writes itself (framing, Host, Authorization…) are refused.
CREATE FUNCTION tollgate_extra_headers_valid(h jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT jsonb_typeof(h) = 'object' AND NOT EXISTS (
    SELECT 1 FROM jsonb_each(h) e
    WHERE e.key !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$'
       OR lower(e.key) IN ('host', 'authorization', 'content-length', 'transfer-encoding',
                           'connection', 'keep-alive', 'te', 'trailer', 'upgrade', 'expect',
                           'content-type', 'user-agent', 'proxy-authorization')
       OR jsonb_typeof(e.value) <> 'string'
       OR (e.value #>> '{}') ~ '[\r\n\x01-\x08\x0b\x0c\x0e-\x1f\x7f]')
$$;

CREATE TABLE upstreams (
  -- Unique, and a metric label and a log field: letters, digits, '.', '_', '-'.
  name                 text PRIMARY KEY
                       CONSTRAINT upstreams_name_form CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
  -- Absolute http(s) URL with the API's base path, e.g. https://openrouter.ai/api/v1.
  base_url             text NOT NULL
                       CONSTRAINT upstreams_base_url_http CHECK (base_url ~ '^https?://[^/?#\s@]+(/[^?#\s]*)?$'),
  -- Where the upstream's API key is, never the key: `env:NAME` (an environment variable of the
  -- tollgate process) or `file:/absolute/path` (read at load, trimmed). NULL = no key.
  api_key_ref          text
                       CONSTRAINT upstreams_api_key_ref_form CHECK (api_key_ref ~ '^(env:[A-Za-z_][A-Za-z0-9_]*|file:/[^\s]+)$'),
  extra_headers        jsonb NOT NULL DEFAULT '{}'
                       CONSTRAINT upstreams_extra_headers_valid CHECK (tollgate_extra_headers_valid(extra_headers)),
  connect_timeout_ms   integer NOT NULL DEFAULT 5000
                       CONSTRAINT upstreams_connect_timeout_positive CHECK (connect_timeout_ms > 0),
  response_timeout_ms  integer NOT NULL DEFAULT 600000   -- until the response headers arrive
                       CONSTRAINT upstreams_response_timeout_positive CHECK (response_timeout_ms > 0),
  idle_timeout_ms      integer NOT NULL DEFAULT 300000   -- between two reads of a body
                       CONSTRAINT upstreams_idle_timeout_positive CHECK (idle_timeout_ms > 0),
  max_connections      integer NOT NULL DEFAULT 64       -- per event-loop thread
                       CONSTRAINT upstreams_max_connections_positive CHECK (max_connections > 0),
  is_active            boolean NOT NULL DEFAULT true,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_routes (
  id              bigserial PRIMARY KEY,
  model_pattern   text NOT NULL                           -- glob: * and ?, like pricing_rules
                  CONSTRAINT model_routes_pattern_not_empty CHECK (model_pattern <> ''),
  upstream        text NOT NULL
                  CONSTRAINT model_routes_upstream_fkey REFERENCES upstreams(name) ON UPDATE CASCADE,
  upstream_model  text                                    -- the model name sent upstream; NULL = as asked
                  CONSTRAINT model_routes_upstream_model_not_empty CHECK (upstream_model <> ''),
  priority        integer NOT NULL DEFAULT 0,             -- highest matching first; lower ones are fallbacks
  weight          integer NOT NULL DEFAULT 1              -- share among matching routes of equal priority
                  CONSTRAINT model_routes_weight_positive CHECK (weight > 0),
  is_active       boolean NOT NULL DEFAULT true,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_routes_upstream_idx ON model_routes (upstream);

-- The upstream that served the request (NULL: none was reached). No foreign key: usage_logs
-- takes none (0005), and the configured `default` upstream has no row.
ALTER TABLE usage_logs ADD COLUMN upstream text;

-- The active routes a model matches, in the order tollgate tries them (within one priority the
-- proxy draws by weight; here they are listed by id).
CREATE FUNCTION tollgate_routes_for(p_model text)
RETURNS TABLE (route_id bigint, upstream text, upstream_model text, priority integer, weight integer)
LANGUAGE sql STABLE AS $$
  SELECT r.id, r.upstream, coalesce(r.upstream_model, p_model), r.priority, r.weight
  FROM model_routes r JOIN upstreams u ON u.name = r.upstream
  WHERE r.is_active AND u.is_active AND tollgate_glob_match(r.model_pattern, p_model)
  ORDER BY r.priority DESC, r.id
$$;

-- NOTIFY <channel given as the trigger's argument>, payload = the table changed. One statement,
-- one notification; the listener reloads the whole table.
CREATE FUNCTION tollgate_notify_table() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(TG_ARGV[0], TG_TABLE_NAME);
  RETURN NULL;
END $$;
CREATE TRIGGER upstreams_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON upstreams
  FOR EACH STATEMENT EXECUTE FUNCTION tollgate_notify_table('tollgate_routes');
CREATE TRIGGER model_routes_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON model_routes
  FOR EACH STATEMENT EXECUTE FUNCTION tollgate_notify_table('tollgate_routes');
