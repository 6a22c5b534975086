-- How an upstream takes its API key (issue 13): OpenAI and OpenRouter read
-- `Authorization: Bearer <key>`, Anthropic reads `x-api-key: <key>` (and requires
-- `anthropic-version`, which tollgate then sends as 2023-06-01 unless the client sent its own).
-- The route table reloads on NOTIFY tollgate_routes (0007's trigger), so a change applies live.
ALTER TABLE upstreams
  ADD COLUMN auth_style text NOT NULL DEFAULT 'bearer'
             CONSTRAINT upstreams_auth_style_known CHECK (auth_style IN ('bearer', 'x-api-key'));

-- x-api-key is written by tollgate itself for such upstreams: not an extra header.
CREATE OR REPLACE FUNCTION tollgate_extra_headers_valid(h jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT jsonb_typeof(h) = 'object' AND NOT EXISTS (
    SELECT 1 FROM jsonb_each(h) e
    WHERE e.key !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$'
       OR lower(e.key) IN ('host', 'authorization', 'content-length', 'transfer-encoding',
                           'connection', 'keep-alive', 'te', 'trailer', 'upgrade', 'expect',
                           'content-type', 'user-agent', 'proxy-authorization', 'x-api-key')
       OR jsonb_typeof(e.value) <> 'string'
       OR (e.value #>> '{}') ~ '[\r\n\x01-\x08\x0b\x0c\x0e-\x1f\x7f]')
$$;
