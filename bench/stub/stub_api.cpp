// tollgate-stub: OpenRouter-compatible request decoding and response rendering.
#include "stub_api.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include <simdjson.h>

namespace tollgate::stub {
namespace {

namespace dom = simdjson::dom;

/// Built-in model catalogue; prices are USD per token (per image for `image_pico`) expressed in
/// 1e-12 USD units.
enum class Kind { text, embeddings, image };

struct ModelInfo {
    std::string_view id;
    std::string_view name;
    std::uint64_t context_length;
    std::uint64_t prompt_pico;
    std::uint64_t completion_pico;
    std::uint64_t cache_read_pico = 0;
    std::uint64_t cache_write_pico = 0;
    std::uint64_t image_pico = 0;  ///< per generated image
    Kind kind = Kind::text;
};

constexpr ModelInfo kModels[] = {
    {"openai/gpt-4o-mini", "OpenAI: GPT-4o-mini", 128000, 150'000, 600'000, 75'000},
    {"openai/gpt-4o", "OpenAI: GPT-4o", 128000, 2'500'000, 10'000'000, 1'250'000},
    {"anthropic/claude-3.5-sonnet", "Anthropic: Claude 3.5 Sonnet", 200000, 3'000'000, 15'000'000,
     300'000, 3'750'000},
    {"meta-llama/llama-3.1-8b-instruct", "Meta: Llama 3.1 8B Instruct", 131072, 20'000, 50'000},
    {"openai/text-embedding-3-small", "OpenAI: Text Embedding 3 Small", 8191, 20'000, 0, 0, 0, 0,
     Kind::embeddings},
    // Token-priced image model: prompt text tokens + image output tokens.
    {"openai/gpt-image-1", "OpenAI: GPT Image 1", 32000, 5'000'000, 40'000'000, 1'250'000, 0, 0,
     Kind::image},
    // Image-priced image model: 0.04 USD per image, tokens free.
    {"openai/dall-e-3", "OpenAI: DALL-E 3", 4000, 0, 0, 0, 0, 40'000'000'000, Kind::image},
};

const ModelInfo* find_model(std::string_view id) {
    for (const auto& m : kModels)
        if (m.id == id) return &m;
    return nullptr;
}

constexpr std::uint64_t kPicoPerUnit = 1'000'000'000'000ULL;
constexpr std::int64_t kMaxChunks = 1'000'000;
constexpr std::int64_t kMaxDelayMs = 600'000;
constexpr std::int64_t kMaxTokens = 1'000'000'000;  ///< cap for token counts set by stub_* fields
constexpr std::int64_t kMaxImages = 10;             ///< images: largest `n` (OpenAI's limit)
constexpr std::int64_t kImageTokens = 1056;          ///< images: default output tokens per image
constexpr std::int64_t kChatImageTokens = 1290;      ///< chat with modalities ["image"]: one image's tokens

inline void put(Buffer& out, std::string_view s) { out.append(s.data(), s.data() + s.size()); }

/// The stub's deterministic "tokenizer": four bytes per token, at least one token.
inline std::uint64_t approx_tokens(std::uint64_t bytes) {
    return std::max<std::uint64_t>(1, (bytes + 3) / 4);
}

/// Looks up an optional field; JSON null counts as absent.
bool lookup(dom::object obj, std::string_view key, dom::element& out) {
    return obj[key].get(out) == simdjson::SUCCESS && !out.is_null();
}

/// Reads an optional integral field clamped to [lo, hi]. Returns an error message, or "".
std::string read_int(dom::object obj, std::string_view key, std::int64_t lo, std::int64_t hi,
                     std::int64_t& value) {
    dom::element e;
    if (!lookup(obj, key, e)) return {};
    double d = 0;
    if (std::int64_t i; e.get_int64().get(i) == simdjson::SUCCESS) {
        value = std::clamp(i, lo, hi);
        return {};
    }
    if (e.get_double().get(d) == simdjson::SUCCESS && std::isfinite(d)) {
        value = std::clamp(static_cast<std::int64_t>(std::clamp(d, -9e18, 9e18)), lo, hi);
        return {};
    }
    return fmt::format("{} must be a number", key);
}

/// Sums the byte length of a string or an array of strings into `bytes`.
bool add_text_bytes(dom::element e, std::uint64_t& bytes, std::uint64_t& count) {
    if (std::string_view s; e.get_string().get(s) == simdjson::SUCCESS) {
        bytes += s.size();
        ++count;
        return true;
    }
    dom::array arr;
    if (e.get_array().get(arr) != simdjson::SUCCESS) return false;
    for (dom::element item : arr) {
        std::string_view s;
        if (item.get_string().get(s) != simdjson::SUCCESS) return false;
        bytes += s.size();
        ++count;
    }
    return true;
}

/// Whether a content part's `type` carries prompt text: "text" (chat, Anthropic), and for the
/// Responses API also "input_text" / "output_text".
inline bool text_part(std::string_view type, bool responses) {
    return type == "text" || (responses && (type == "input_text" || type == "output_text"));
}

/// Bytes of a content value: a string, or the text parts of a content-part array.
std::uint64_t content_bytes(dom::element content, bool responses = false) {
    if (std::string_view s; content.get_string().get(s) == simdjson::SUCCESS) return s.size();
    std::uint64_t bytes = 0;
    if (dom::array parts; content.get_array().get(parts) == simdjson::SUCCESS) {
        for (dom::element part : parts) {
            std::string_view type, text;
            if (part["type"].get_string().get(type) == simdjson::SUCCESS && text_part(type, responses) &&
                part["text"].get_string().get(text) == simdjson::SUCCESS)
                bytes += text.size();
        }
    }
    return bytes;
}

/// Bytes of a chat message's content: a string, or the text parts of a content-part array.
std::uint64_t message_content_bytes(dom::element message, bool responses = false) {
    dom::element content;
    if (!message.is_object() || !lookup(message.get_object().value_unsafe(), "content", content))
        return 0;
    return content_bytes(content, responses);
}

/// Writes `"id":"gen-N","object":"...","created":T,"model":M,"provider":"Stub",` after `{`.
void append_envelope(Buffer& out, const Plan& p, std::string_view object) {
    fmt::format_to(fmt::appender(out), "{{\"id\":\"gen-{}\",\"object\":\"{}\",\"created\":{},\"model\":",
                   p.gen, object, p.created);
    put(out, p.model_json);
    put(out, ",\"provider\":\"Stub\",");
}

/// Prompt tokens in OpenAI's sense (cached and cache-written tokens included).
inline std::uint64_t input_total(const Plan& p) { return p.prompt_tokens + p.cached_tokens + p.cache_write_tokens; }
/// Output tokens in OpenAI's and Anthropic's sense (reasoning included).
/// Output tokens: visible chunks, reasoning, and (chat) image output; the Images API's image
/// tokens are its completion_tokens already.
inline std::uint64_t output_total(const Plan& p) {
    return p.completion_tokens + p.reasoning_tokens + (p.endpoint == Endpoint::chat ? p.image_tokens : 0);
}

void append_usage(Buffer& out, const Plan& p) {
    const std::uint64_t in = input_total(p), gen = output_total(p);
    fmt::format_to(fmt::appender(out),
                   "\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},"
                   "\"prompt_tokens_details\":{{\"cached_tokens\":{}",
                   in, gen, in + gen, p.cached_tokens);
    if (p.cache_write_tokens) fmt::format_to(fmt::appender(out), ",\"cache_write_tokens\":{}", p.cache_write_tokens);
    fmt::format_to(fmt::appender(out), "}},\"completion_tokens_details\":{{\"reasoning_tokens\":{}", p.reasoning_tokens);
    if (p.image_tokens && p.endpoint == Endpoint::chat)
        fmt::format_to(fmt::appender(out), ",\"image_tokens\":{}", p.image_tokens);
    put(out, "},\"cost\":");
    append_decimal_pico(out, p.cost_pico);
    put(out, ",\"cost_details\":{\"upstream_inference_cost\":null}}");
}

inline bool is_chat(const Plan& p) { return p.endpoint == Endpoint::chat; }
inline std::string_view chunk_object(const Plan& p) {
    return is_chat(p) ? "chat.completion.chunk" : "text_completion";
}
inline std::string_view finish_reason(const Plan& p) { return p.truncated ? "length" : "stop"; }

}  // namespace

// ---- routing / failures ------------------------------------------------------------------

Endpoint route(std::string_view method, std::string_view target) {
    std::string_view path = target.substr(0, target.find('?'));
    if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
    const bool get = method == "GET";
    const bool post = method == "POST";
    if (path == "/__stub/last") return get ? Endpoint::stub_last : Endpoint::not_found;
    if (path == "/__stub/reset") return post ? Endpoint::stub_reset : Endpoint::not_found;
    if (post) {
        if (path.ends_with("/chat/completions")) return Endpoint::chat;
        if (path.ends_with("/completions")) return Endpoint::completions;
        if (path.ends_with("/embeddings")) return Endpoint::embeddings;
        if (path.ends_with("/responses")) return Endpoint::responses;
        if (path.ends_with("/messages")) return Endpoint::messages;
        if (path.ends_with("/images/generations")) return Endpoint::images;
    } else if (get && path.ends_with("/models")) {
        return Endpoint::models;
    }
    return Endpoint::not_found;
}

bool parse_failure(std::string_view text, Failure& out) {
    if (text == "none" || text.empty()) { out = {}; return true; }
    if (text == "midstream") { out = {FailMode::midstream, 0}; return true; }
    if (text == "drop") { out = {FailMode::drop, 0}; return true; }
    if (text == "drop_midstream") { out = {FailMode::drop_midstream, 0}; return true; }
    constexpr std::string_view prefix = "status:";
    if (!text.starts_with(prefix)) return false;
    text.remove_prefix(prefix.size());
    int code = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), code);
    if (ec != std::errc{} || end != text.data() + text.size() || code < 200 || code > 599)
        return false;
    out = {FailMode::status, code};
    return true;
}

// ---- decoding ----------------------------------------------------------------------------

struct RequestDecoder::Impl {
    dom::parser parser;
};

RequestDecoder::RequestDecoder() : impl_(std::make_unique<Impl>()) {}
RequestDecoder::~RequestDecoder() = default;

std::string RequestDecoder::decode(Endpoint endpoint, std::string& body, const Defaults& defaults,
                                   Plan& p) {
    // simdjson reads up to SIMDJSON_PADDING bytes past the end; reserving keeps it zero-copy.
    if (body.capacity() < body.size() + simdjson::SIMDJSON_PADDING)
        body.reserve(body.size() + simdjson::SIMDJSON_PADDING);
    dom::element root;
    if (auto err = impl_->parser.parse(body.data(), body.size(), false).get(root))
        return fmt::format("invalid JSON body: {}", simdjson::error_message(err));
    dom::object obj;
    if (root.get_object().get(obj) != simdjson::SUCCESS) return "request body must be a JSON object";

    p.endpoint = endpoint;
    std::string_view model;
    if (obj["model"].get_string().get(model) != simdjson::SUCCESS || model.empty())
        return "model is required";
    Buffer model_json;
    append_json_string(model_json, model);
    p.model_json.assign(model_json.data(), model_json.size());

    p.stream = false;
    if (dom::element e; lookup(obj, "stream", e) && e.get_bool().get(p.stream) != simdjson::SUCCESS)
        return "stream must be a boolean";

    std::int64_t chunks = defaults.chunks;
    p.chunk_interval_ms = defaults.chunk_interval_ms;
    p.latency_ms = defaults.latency_ms;
    for (auto err : {read_int(obj, "stub_chunks", 0, kMaxChunks, chunks),
                     read_int(obj, "stub_interval_ms", 0, kMaxDelayMs, p.chunk_interval_ms),
                     read_int(obj, "stub_latency_ms", 0, kMaxDelayMs, p.latency_ms)})
        if (!err.empty()) return err;

    p.fail = {};
    if (dom::element e; lookup(obj, "stub_fail", e)) {
        std::string_view mode;
        if (e.get_string().get(mode) != simdjson::SUCCESS || !parse_failure(mode, p.fail))
            return "stub_fail must be \"status:NNN\", \"midstream\", \"drop\" or \"drop_midstream\"";
    }

    p.retry_after.clear();
    p.error_json.clear();
    p.has_error_body = false;
    p.error_body.clear();
    p.error_content_type.clear();
    auto header_safe = [](std::string_view v) { return v.find_first_of("\r\n") == std::string_view::npos; };
    if (dom::element e; lookup(obj, "stub_retry_after", e)) {
        std::string_view text;
        if (std::int64_t n; e.get_int64().get(n) == simdjson::SUCCESS) p.retry_after = std::to_string(n);
        else if (e.get_string().get(text) == simdjson::SUCCESS && header_safe(text)) p.retry_after = text;
        else return "stub_retry_after must be an integer or a one-line string";
    }
    if (dom::element e; lookup(obj, "stub_error", e)) {
        if (!e.is_object() && !e.is_string()) return "stub_error must be an object or a string";
        p.error_json = simdjson::minify(e);
    }
    if (dom::element e; lookup(obj, "stub_error_body", e)) {
        std::string_view text;
        if (e.get_string().get(text) != simdjson::SUCCESS) return "stub_error_body must be a string";
        p.has_error_body = true;
        p.error_body = text;
    }
    if (dom::element e; lookup(obj, "stub_error_content_type", e)) {
        std::string_view text;
        if (e.get_string().get(text) != simdjson::SUCCESS || !header_safe(text))
            return "stub_error_content_type must be a one-line string";
        p.error_content_type = text;
    }

    const ModelInfo* info = find_model(model);
    p.catalogued = info != nullptr;
    p.completion_tokens = 0;
    p.reasoning_tokens = 0;
    p.cached_tokens = 0;
    p.cache_write_tokens = 0;
    p.truncated = false;
    p.max_output = -1;
    p.inputs = 0;
    p.image_tokens = 0;
    p.image_url = false;
    p.omit_usage = false;
    p.size.clear();
    p.midstream_error_event = false;

    if (endpoint == Endpoint::embeddings) {
        dom::element input;
        if (!lookup(obj, "input", input)) return "input is required";
        std::uint64_t tokens = 0;
        auto count_one = [&](dom::element e) {
            std::string_view s;
            if (e.get_string().get(s) != simdjson::SUCCESS) return false;
            tokens += approx_tokens(s.size());
            ++p.inputs;
            return true;
        };
        bool ok = true;
        if (dom::array arr; input.get_array().get(arr) == simdjson::SUCCESS) {
            for (dom::element item : arr) ok = ok && count_one(item);
            ok = ok && p.inputs > 0;
        } else {
            ok = count_one(input);
        }
        if (!ok) return "input must be a string or a non-empty array of strings";
        p.prompt_tokens = tokens;
        p.stream = false;
    } else if (endpoint == Endpoint::images) {
        std::string_view prompt;
        if (obj["prompt"].get_string().get(prompt) != simdjson::SUCCESS) return "prompt is required";
        p.prompt_tokens = approx_tokens(prompt.size());
        std::int64_t n = 1;
        if (dom::element e; lookup(obj, "n", e)) {
            if (e.get_int64().get(n) != simdjson::SUCCESS || n < 1 || n > kMaxImages)
                return fmt::format("n must be an integer between 1 and {}", kMaxImages);
        }
        p.inputs = static_cast<std::uint64_t>(n);
        std::int64_t per_image = kImageTokens;
        if (auto err = read_int(obj, "stub_image_tokens", 0, kMaxTokens, per_image); !err.empty()) return err;
        p.image_tokens = static_cast<std::uint64_t>(per_image);
        p.completion_tokens = p.inputs * p.image_tokens;
        p.size = "1024x1024";
        if (dom::element e; lookup(obj, "size", e)) {
            std::string_view size;
            if (e.get_string().get(size) != simdjson::SUCCESS) return "size must be a string";
            p.size = size;
        }
        if (dom::element e; lookup(obj, "response_format", e)) {
            std::string_view format;
            if (e.get_string().get(format) != simdjson::SUCCESS || (format != "url" && format != "b64_json"))
                return "response_format must be \"url\" or \"b64_json\"";
            p.image_url = format == "url";
        }
        if (dom::element e; lookup(obj, "stub_no_usage", e) && e.get_bool().get(p.omit_usage) != simdjson::SUCCESS)
            return "stub_no_usage must be a boolean";
        p.stream = false;  // image streaming (partial images) is not emulated
    } else {
        std::uint64_t bytes = 0, count = 0;
        if (endpoint == Endpoint::chat || endpoint == Endpoint::messages) {
            dom::element msgs;
            if (lookup(obj, "messages", msgs)) {
                dom::array arr;
                if (msgs.get_array().get(arr) != simdjson::SUCCESS) return "messages must be an array";
                for (dom::element m : arr) {
                    bytes += message_content_bytes(m);
                    ++count;
                }
            } else if (endpoint == Endpoint::messages) {
                return "messages: Field required";
            }
            if (dom::element system; endpoint == Endpoint::messages && lookup(obj, "system", system)) {
                bytes += content_bytes(system);
                ++count;
            }
            p.prompt_tokens = approx_tokens(bytes) + 4 * count;
        } else if (endpoint == Endpoint::responses) {
            if (dom::element input; lookup(obj, "input", input)) {
                if (std::string_view s; input.get_string().get(s) == simdjson::SUCCESS) {
                    bytes += s.size();
                    ++count;
                } else if (dom::array items; input.get_array().get(items) == simdjson::SUCCESS) {
                    for (dom::element item : items) {
                        bytes += message_content_bytes(item, true);
                        ++count;
                    }
                } else {
                    return "input must be a string or an array of input items";
                }
            }
            if (std::string_view s; obj["instructions"].get_string().get(s) == simdjson::SUCCESS) {
                bytes += s.size();
                ++count;
            }
            p.prompt_tokens = approx_tokens(bytes) + 4 * count;
        } else {
            if (dom::element prompt; lookup(obj, "prompt", prompt) && !add_text_bytes(prompt, bytes, count))
                return "prompt must be a string or an array of strings";
            p.prompt_tokens = approx_tokens(bytes);
        }

        std::int64_t cap = -1;
        if (endpoint == Endpoint::responses) {
            if (auto err = read_int(obj, "max_output_tokens", 0, kMaxTokens, cap); !err.empty()) return err;
        } else if (endpoint == Endpoint::messages) {
            dom::element e;
            if (!lookup(obj, "max_tokens", e)) return "max_tokens: Field required";
            if (e.get_int64().get(cap) != simdjson::SUCCESS || cap < 1)
                return "max_tokens: Input should be a valid integer greater than or equal to 1";
            cap = std::min(cap, kMaxTokens);
        } else {
            if (auto err = read_int(obj, "max_tokens", 0, kMaxChunks, cap); !err.empty()) return err;
            if (auto err = read_int(obj, "max_completion_tokens", 0, kMaxChunks, cap); !err.empty())
                return err;
        }
        p.max_output = cap;

        std::int64_t cached = 0, cache_write = 0, reasoning = 0;
        for (auto err : {read_int(obj, "stub_cached_tokens", 0, kMaxTokens, cached),
                         read_int(obj, "stub_cache_write_tokens", 0, kMaxTokens, cache_write),
                         read_int(obj, "stub_reasoning_tokens", 0, kMaxTokens, reasoning)})
            if (!err.empty()) return err;
        p.cached_tokens = static_cast<std::uint64_t>(cached);
        p.cache_write_tokens = static_cast<std::uint64_t>(cache_write);

        // Reasoning comes first and counts against the cap; the visible chunks get the rest.
        if (cap >= 0 && reasoning > cap) {
            reasoning = cap;
            p.truncated = true;
        }
        p.reasoning_tokens = static_cast<std::uint64_t>(reasoning);
        p.completion_tokens = static_cast<std::uint64_t>(chunks);
        if (cap >= 0 && cap - reasoning < chunks) {
            p.completion_tokens = static_cast<std::uint64_t>(cap - reasoning);
            p.truncated = true;
        }
        if (endpoint == Endpoint::chat) {
            // OpenRouter's image output in chat (`modalities` with "image"): one image of
            // kChatImageTokens tokens unless stub_image_tokens says otherwise; reported in
            // completion_tokens_details.image_tokens, a part of completion_tokens.
            std::int64_t image_tokens = 0;
            if (dom::element mods; lookup(obj, "modalities", mods)) {
                if (dom::array arr; mods.get_array().get(arr) == simdjson::SUCCESS)
                    for (dom::element m : arr)
                        if (std::string_view v; m.get_string().get(v) == simdjson::SUCCESS && v == "image")
                            image_tokens = kChatImageTokens;
            }
            if (auto err = read_int(obj, "stub_image_tokens", 0, kMaxTokens, image_tokens); !err.empty()) return err;
            p.image_tokens = static_cast<std::uint64_t>(image_tokens);
        }

        if (dom::element e; endpoint == Endpoint::responses && lookup(obj, "stub_midstream_event", e)) {
            std::string_view kind;
            if (e.get_string().get(kind) != simdjson::SUCCESS || (kind != "error" && kind != "response.failed"))
                return "stub_midstream_event must be \"response.failed\" or \"error\"";
            p.midstream_error_event = kind == "error";
        }
    }

    p.cost_pico = 0;
    if (info) {
        p.cost_pico = p.prompt_tokens * info->prompt_pico + p.cached_tokens * info->cache_read_pico +
                      p.cache_write_tokens * info->cache_write_pico +
                      (p.completion_tokens + p.reasoning_tokens) * info->completion_pico +
                      (endpoint == Endpoint::chat ? p.image_tokens * info->completion_pico : 0) +
                      (endpoint == Endpoint::images ? p.inputs * info->image_pico : 0);
    }
    return {};
}

// ---- rendering ---------------------------------------------------------------------------

void append_json_string(Buffer& out, std::string_view s) {
    static constexpr char kHex[] = "0123456789abcdef";
    const bool utf8 = simdjson::validate_utf8(s.data(), s.size());
    out.push_back('"');
    std::size_t run = 0;  // start of the pending run of bytes that need no escaping
    for (std::size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        const bool escape = c == '"' || c == '\\' || c < 0x20 || (c >= 0x80 && !utf8);
        if (!escape) continue;
        put(out, s.substr(run, i - run));
        run = i + 1;
        switch (c) {
            case '"': put(out, "\\\""); break;
            case '\\': put(out, "\\\\"); break;
            case '\n': put(out, "\\n"); break;
            case '\r': put(out, "\\r"); break;
            case '\t': put(out, "\\t"); break;
            default: {
                const char esc[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
                out.append(esc, esc + sizeof esc);
            }
        }
    }
    put(out, s.substr(run));
    out.push_back('"');
}

void append_decimal_pico(Buffer& out, std::uint64_t pico) {
    const std::uint64_t whole = pico / kPicoPerUnit;
    std::uint64_t frac = pico % kPicoPerUnit;
    if (frac == 0) {
        fmt::format_to(fmt::appender(out), "{}", whole);
        return;
    }
    int digits = 12;
    while (frac % 10 == 0) {
        frac /= 10;
        --digits;
    }
    fmt::format_to(fmt::appender(out), "{}.{:0{}}", whole, frac, digits);
}

void render_error(Buffer& out, int code, std::string_view message) {
    fmt::format_to(fmt::appender(out), "{{\"error\":{{\"code\":{},\"message\":", code);
    append_json_string(out, message);
    put(out, "}}");
}

std::string_view anthropic_error_type(int status) {
    switch (status) {
        case 400: return "invalid_request_error";
        case 401: return "authentication_error";
        case 402: return "billing_error";
        case 403: return "permission_error";
        case 404: return "not_found_error";
        case 413: return "request_too_large";
        case 429: return "rate_limit_error";
        case 504: return "timeout_error";
        case 529: return "overloaded_error";
        default: return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

void render_anthropic_error(Buffer& out, int status, std::string_view message) {
    fmt::format_to(fmt::appender(out), "{{\"type\":\"error\",\"error\":{{\"type\":\"{}\",\"message\":",
                   anthropic_error_type(status));
    append_json_string(out, message);
    put(out, "}}");
}

void render_error_for(Buffer& out, Endpoint endpoint, int status, std::string_view message) {
    if (endpoint == Endpoint::messages)
        render_anthropic_error(out, status, message);
    else
        render_error(out, status, message);
}

std::string_view render_status_failure(Buffer& out, const Plan& p, int status) {
    if (p.has_error_body) {
        put(out, p.error_body);
        return p.error_content_type.empty() ? std::string_view("text/plain") : std::string_view(p.error_content_type);
    }
    if (p.error_json.empty()) {
        render_error_for(out, p.endpoint, status, "stub failure");
    } else {
        put(out, p.endpoint == Endpoint::messages ? "{\"type\":\"error\",\"error\":" : "{\"error\":");
        put(out, p.error_json);
        out.push_back('}');
    }
    return "application/json";
}

void render_completion(Buffer& out, const Plan& p) {
    const bool chat = is_chat(p);
    append_envelope(out, p, chat ? "chat.completion" : "text_completion");
    put(out, chat ? "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\""
                  : "\"choices\":[{\"index\":0,\"text\":\"");
    for (std::uint64_t i = 0; i < p.completion_tokens; ++i)
        fmt::format_to(fmt::appender(out), "tok{} ", i);
    fmt::format_to(fmt::appender(out), "\"{}\"finish_reason\":\"{}\",\"native_finish_reason\":\"{}\"{}}}],",
                   chat ? "}," : ",", finish_reason(p), finish_reason(p),
                   chat ? "" : ",\"logprobs\":null");
    append_usage(out, p);
    out.push_back('}');
}

void render_embeddings(Buffer& out, const Plan& p) {
    fmt::format_to(fmt::appender(out), "{{\"id\":\"gen-{}\",\"object\":\"list\",\"data\":[", p.gen);
    for (std::uint64_t i = 0; i < p.inputs; ++i) {
        fmt::format_to(fmt::appender(out), "{}{{\"object\":\"embedding\",\"index\":{},\"embedding\":[",
                       i ? "," : "", i);
        for (std::uint64_t j = 0; j < 8; ++j) {
            // Multiples of 1/64 in [-0.5, 0.5): exact in binary and short in decimal.
            const auto k = static_cast<std::int64_t>((i * 8 + j) * 37 % 64) - 32;
            fmt::format_to(fmt::appender(out), "{}{}", j ? "," : "", static_cast<double>(k) / 64.0);
        }
        put(out, "]}");
    }
    put(out, "],\"model\":");
    put(out, p.model_json);
    fmt::format_to(fmt::appender(out), ",\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{},\"cost\":",
                   p.prompt_tokens, p.prompt_tokens);
    append_decimal_pico(out, p.cost_pico);
    put(out, "}}");
}

void render_stream_content(Buffer& out, const Plan& p, std::uint64_t index) {
    put(out, "data: ");
    append_envelope(out, p, chunk_object(p));
    if (is_chat(p))
        fmt::format_to(fmt::appender(out),
                       "\"choices\":[{{\"index\":0,\"delta\":{{{}\"content\":\"tok{} \"}},"
                       "\"finish_reason\":null,\"native_finish_reason\":null}}]}}\n\n",
                       index == 0 ? "\"role\":\"assistant\"," : "", index);
    else
        fmt::format_to(fmt::appender(out),
                       "\"choices\":[{{\"index\":0,\"text\":\"tok{} \",\"finish_reason\":null,"
                       "\"native_finish_reason\":null,\"logprobs\":null}}]}}\n\n",
                       index);
}

void render_stream_finish(Buffer& out, const Plan& p) {
    put(out, "data: ");
    append_envelope(out, p, chunk_object(p));
    fmt::format_to(fmt::appender(out),
                   "\"choices\":[{{\"index\":0,{},\"finish_reason\":\"{}\",\"native_finish_reason\":\"{}\"{}}}]}}\n\n",
                   is_chat(p) ? "\"delta\":{}" : "\"text\":\"\"", finish_reason(p), finish_reason(p),
                   is_chat(p) ? "" : ",\"logprobs\":null");
}

void render_stream_usage(Buffer& out, const Plan& p) {
    put(out, "data: ");
    append_envelope(out, p, chunk_object(p));
    put(out, "\"choices\":[],");
    append_usage(out, p);
    put(out, "}\n\n");
}

void render_stream_error(Buffer& out, const Plan& p) {
    put(out, "data: ");
    append_envelope(out, p, chunk_object(p));
    put(out, "\"error\":");
    put(out, p.error_json.empty() ? std::string_view("{\"code\":502,\"message\":\"stub mid-stream error\"}")
                                  : std::string_view(p.error_json));
    put(out, ",\"choices\":[{\"index\":0,");
    put(out, is_chat(p) ? "\"delta\":{\"content\":\"\"}" : "\"text\":\"\"");
    put(out, ",\"finish_reason\":\"error\"}]}\n\n");
}

// ---- Responses API -----------------------------------------------------------------------

namespace {

void append_output_text(Buffer& out, std::uint64_t chunks) {
    for (std::uint64_t i = 0; i < chunks; ++i) fmt::format_to(fmt::appender(out), "tok{} ", i);
}

inline std::string_view response_status(const Plan& p) { return p.truncated ? "incomplete" : "completed"; }

/// `"usage":{...}` of the Responses API (+ OpenRouter's cost for catalogued models).
void append_responses_usage(Buffer& out, const Plan& p) {
    const std::uint64_t in = input_total(p), gen = output_total(p);
    fmt::format_to(fmt::appender(out), "\"usage\":{{\"input_tokens\":{},\"input_tokens_details\":{{\"cached_tokens\":{}",
                   in, p.cached_tokens);
    if (p.cache_write_tokens) fmt::format_to(fmt::appender(out), ",\"cache_write_tokens\":{}", p.cache_write_tokens);
    fmt::format_to(fmt::appender(out),
                   "}},\"output_tokens\":{},\"output_tokens_details\":{{\"reasoning_tokens\":{}}},\"total_tokens\":{}",
                   gen, p.reasoning_tokens, in + gen);
    if (p.catalogued) {
        put(out, ",\"cost\":");
        append_decimal_pico(out, p.cost_pico);
        put(out, ",\"cost_details\":{\"upstream_inference_cost\":null}");
    }
    out.push_back('}');
}

/// The `output_text` content part, with the full text when `full`, else empty.
void append_output_part(Buffer& out, const Plan& p, bool full) {
    put(out, "{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"");
    if (full) append_output_text(out, p.completion_tokens);
    put(out, "\"}");
}

/// The assistant message output item: in progress (no content) or done (full content).
void append_output_item(Buffer& out, const Plan& p, bool done) {
    fmt::format_to(fmt::appender(out),
                   "{{\"id\":\"msg_gen-{}\",\"type\":\"message\",\"status\":\"{}\",\"role\":\"assistant\",\"content\":[",
                   p.gen, done ? response_status(p) : "in_progress");
    if (done) append_output_part(out, p, true);
    put(out, "]}");
}

enum class Phase { in_progress, done, failed };

/// The `response` object in a given phase (done = completed or incomplete, with output and usage).
void append_response(Buffer& out, const Plan& p, Phase phase) {
    const std::string_view status =
        phase == Phase::in_progress ? "in_progress" : phase == Phase::failed ? "failed" : response_status(p);
    fmt::format_to(fmt::appender(out),
                   "{{\"id\":\"gen-{}\",\"object\":\"response\",\"created_at\":{},\"status\":\"{}\","
                   "\"background\":false,\"error\":",
                   p.gen, p.created, status);
    if (phase != Phase::failed)
        put(out, "null");
    else
        put(out, p.error_json.empty() ? std::string_view("{\"code\":\"server_error\",\"message\":\"stub mid-stream error\"}")
                                      : std::string_view(p.error_json));
    put(out, phase == Phase::done && p.truncated ? ",\"incomplete_details\":{\"reason\":\"max_output_tokens\"}"
                                                 : ",\"incomplete_details\":null");
    put(out, ",\"instructions\":null,\"max_output_tokens\":");
    if (p.max_output >= 0)
        fmt::format_to(fmt::appender(out), "{}", p.max_output);
    else
        put(out, "null");
    put(out, ",\"model\":");
    put(out, p.model_json);
    put(out, ",\"output\":[");
    if (phase == Phase::done) append_output_item(out, p, true);
    put(out, "],\"parallel_tool_calls\":true,\"previous_response_id\":null,"
             "\"reasoning\":{\"effort\":null,\"summary\":null},\"store\":false,\"temperature\":1,"
             "\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1,"
             "\"truncation\":\"disabled\",\"user\":null,\"metadata\":{},\"provider\":\"Stub\",");
    if (phase == Phase::done)
        append_responses_usage(out, p);
    else
        put(out, "\"usage\":null");
    out.push_back('}');
}

/// `event: <type>\ndata: {"type":"<type>","sequence_number":N,` (the caller closes the object).
void begin_responses_event(Buffer& out, std::string_view type, std::uint64_t seq) {
    fmt::format_to(fmt::appender(out), "event: {}\ndata: {{\"type\":\"{}\",\"sequence_number\":{},", type, type, seq);
}

/// `"item_id":"msg_gen-N","output_index":0,"content_index":0,`
void append_part_address(Buffer& out, const Plan& p) {
    fmt::format_to(fmt::appender(out), "\"item_id\":\"msg_gen-{}\",\"output_index\":0,\"content_index\":0,", p.gen);
}

constexpr std::size_t kResponsesPrologue = 4;
constexpr std::size_t kResponsesEpilogue = 4;

// ---- Anthropic Messages ------------------------------------------------------------------

inline std::string_view stop_reason(const Plan& p) { return p.truncated ? "max_tokens" : "end_turn"; }

/// Anthropic usage: input_tokens (uncached), cache fields, output_tokens (+ cost if catalogued).
void append_anthropic_usage(Buffer& out, const Plan& p, std::uint64_t output_tokens, bool cost) {
    fmt::format_to(fmt::appender(out),
                   "\"usage\":{{\"input_tokens\":{},\"cache_creation_input_tokens\":{},"
                   "\"cache_read_input_tokens\":{},\"output_tokens\":{}",
                   p.prompt_tokens, p.cache_write_tokens, p.cached_tokens, output_tokens);
    if (cost && p.catalogued) {
        put(out, ",\"cost\":");
        append_decimal_pico(out, p.cost_pico);
    }
    out.push_back('}');
}

/// The message object's head: `{"id":..,"type":"message","role":"assistant","model":M,`.
void append_message_head(Buffer& out, const Plan& p) {
    fmt::format_to(fmt::appender(out), "{{\"id\":\"msg_gen-{}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":",
                   p.gen);
    put(out, p.model_json);
    out.push_back(',');
}

inline void begin_anthropic_event(Buffer& out, std::string_view type) {
    fmt::format_to(fmt::appender(out), "event: {}\ndata: {{\"type\":\"{}\"", type, type);
}

constexpr std::size_t kMessagesPrologue = 3;
constexpr std::size_t kMessagesEpilogue = 3;

}  // namespace

void render_response(Buffer& out, const Plan& p) { append_response(out, p, Phase::done); }

void render_message(Buffer& out, const Plan& p) {
    append_message_head(out, p);
    put(out, "\"content\":[{\"type\":\"text\",\"text\":\"");
    append_output_text(out, p.completion_tokens);
    fmt::format_to(fmt::appender(out), "\"}}],\"stop_reason\":\"{}\",\"stop_sequence\":null,", stop_reason(p));
    append_anthropic_usage(out, p, output_total(p), true);
    out.push_back('}');
}

std::size_t typed_prologue_events(const Plan& p) {
    return p.endpoint == Endpoint::responses ? kResponsesPrologue : kMessagesPrologue;
}

std::size_t typed_epilogue_events(const Plan& p) {
    return p.endpoint == Endpoint::responses ? kResponsesEpilogue : kMessagesEpilogue;
}

void render_typed_prologue(Buffer& out, const Plan& p, std::size_t i) {
    if (p.endpoint == Endpoint::responses) {
        switch (i) {
            case 0:
            case 1:
                begin_responses_event(out, i == 0 ? "response.created" : "response.in_progress", i);
                put(out, "\"response\":");
                append_response(out, p, Phase::in_progress);
                break;
            case 2:
                begin_responses_event(out, "response.output_item.added", i);
                put(out, "\"output_index\":0,\"item\":");
                append_output_item(out, p, false);
                break;
            default:
                begin_responses_event(out, "response.content_part.added", i);
                append_part_address(out, p);
                put(out, "\"part\":");
                append_output_part(out, p, false);
                break;
        }
        put(out, "}\n\n");
        return;
    }
    switch (i) {
        case 0:
            begin_anthropic_event(out, "message_start");
            put(out, ",\"message\":");
            append_message_head(out, p);
            put(out, "\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,");
            append_anthropic_usage(out, p, std::min<std::uint64_t>(1, output_total(p)), false);
            out.push_back('}');
            break;
        case 1:
            begin_anthropic_event(out, "content_block_start");
            put(out, ",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}");
            break;
        default:
            begin_anthropic_event(out, "ping");
            break;
    }
    put(out, "}\n\n");
}

void render_typed_content(Buffer& out, const Plan& p, std::uint64_t index) {
    if (p.endpoint == Endpoint::responses) {
        begin_responses_event(out, "response.output_text.delta", kResponsesPrologue + index);
        append_part_address(out, p);
        fmt::format_to(fmt::appender(out), "\"delta\":\"tok{} \",\"logprobs\":[]}}\n\n", index);
    } else {
        fmt::format_to(fmt::appender(out),
                       "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,"
                       "\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok{} \"}}}}\n\n",
                       index);
    }
}

void render_typed_epilogue(Buffer& out, const Plan& p, std::size_t i) {
    if (p.endpoint == Endpoint::responses) {
        const std::uint64_t seq = kResponsesPrologue + p.completion_tokens + i;
        switch (i) {
            case 0:
                begin_responses_event(out, "response.output_text.done", seq);
                append_part_address(out, p);
                put(out, "\"text\":\"");
                append_output_text(out, p.completion_tokens);
                put(out, "\",\"logprobs\":[]");
                break;
            case 1:
                begin_responses_event(out, "response.content_part.done", seq);
                append_part_address(out, p);
                put(out, "\"part\":");
                append_output_part(out, p, true);
                break;
            case 2:
                begin_responses_event(out, "response.output_item.done", seq);
                put(out, "\"output_index\":0,\"item\":");
                append_output_item(out, p, true);
                break;
            default:
                begin_responses_event(out, p.truncated ? "response.incomplete" : "response.completed", seq);
                put(out, "\"response\":");
                append_response(out, p, Phase::done);
                break;
        }
        put(out, "}\n\n");
        return;
    }
    switch (i) {
        case 0:
            begin_anthropic_event(out, "content_block_stop");
            put(out, ",\"index\":0");
            break;
        case 1:
            begin_anthropic_event(out, "message_delta");
            fmt::format_to(fmt::appender(out), ",\"delta\":{{\"stop_reason\":\"{}\",\"stop_sequence\":null}},",
                           stop_reason(p));
            append_anthropic_usage(out, p, output_total(p), true);
            break;
        default:
            begin_anthropic_event(out, "message_stop");
            break;
    }
    put(out, "}\n\n");
}

void render_typed_error(Buffer& out, const Plan& p, std::uint64_t sent) {
    if (p.endpoint == Endpoint::messages) {
        begin_anthropic_event(out, "error");
        put(out, ",\"error\":");
        put(out, p.error_json.empty()
                     ? std::string_view("{\"type\":\"overloaded_error\",\"message\":\"stub mid-stream error\"}")
                     : std::string_view(p.error_json));
        put(out, "}\n\n");
        return;
    }
    const std::uint64_t seq = kResponsesPrologue + sent;
    if (!p.midstream_error_event) {
        begin_responses_event(out, "response.failed", seq);
        put(out, "\"response\":");
        append_response(out, p, Phase::failed);
        put(out, "}\n\n");
        return;
    }
    // `error` event: code/message/param at the top level; a `stub_error` object's members replace them.
    fmt::format_to(fmt::appender(out), "event: error\ndata: {{\"type\":\"error\",\"sequence_number\":{}", seq);
    if (p.error_json.size() > 2 && p.error_json.front() == '{') {
        out.push_back(',');
        put(out, std::string_view(p.error_json).substr(1));
    } else if (!p.error_json.empty() && p.error_json.front() == '"') {
        put(out, ",\"code\":\"server_error\",\"message\":");
        put(out, p.error_json);
        put(out, ",\"param\":null}");
    } else {
        put(out, ",\"code\":\"server_error\",\"message\":\"stub mid-stream error\",\"param\":null}");
    }
    put(out, "\n\n");
}

// ---- Images API --------------------------------------------------------------------------

void render_images(Buffer& out, const Plan& p) {
    fmt::format_to(fmt::appender(out), "{{\"created\":{},\"data\":[", p.created);
    for (std::uint64_t i = 0; i < p.inputs; ++i) {
        if (i) out.push_back(',');
        if (p.image_url)
            fmt::format_to(fmt::appender(out), "{{\"url\":\"https://stub.invalid/images/gen-{}-{}.png\"}}", p.gen, i);
        else
            fmt::format_to(fmt::appender(out), "{{\"b64_json\":\"{}\"}}", kStubImageB64);
    }
    put(out, "],\"background\":\"opaque\",\"output_format\":\"png\",\"quality\":\"medium\",\"size\":");
    append_json_string(out, p.size);
    if (!p.omit_usage) {
        fmt::format_to(fmt::appender(out),
                       ",\"usage\":{{\"input_tokens\":{},\"input_tokens_details\":{{\"text_tokens\":{},\"image_tokens\":0}},"
                       "\"output_tokens\":{},\"total_tokens\":{}",
                       p.prompt_tokens, p.prompt_tokens, p.completion_tokens, p.prompt_tokens + p.completion_tokens);
        if (p.catalogued) {
            put(out, ",\"cost\":");
            append_decimal_pico(out, p.cost_pico);
        }
        out.push_back('}');
    }
    out.push_back('}');
}

std::string render_models() {
    Buffer out;
    put(out, "{\"data\":[");
    bool first = true;
    for (const auto& m : kModels) {
        const std::string_view modality = m.kind == Kind::embeddings ? "text->embeddings"
                                          : m.kind == Kind::image    ? "text->image"
                                                                     : "text->text";
        const std::string_view output = m.kind == Kind::embeddings ? "embeddings" : m.kind == Kind::image ? "image" : "text";
        fmt::format_to(fmt::appender(out),
                       "{}{{\"id\":\"{}\",\"canonical_slug\":\"{}\",\"name\":\"{}\",\"created\":1700000000,"
                       "\"description\":\"tollgate-stub model\",\"context_length\":{},"
                       "\"architecture\":{{\"modality\":\"{}\",\"input_modalities\":[\"text\"],"
                       "\"output_modalities\":[\"{}\"],\"tokenizer\":\"Other\",\"instruct_type\":null}},"
                       "\"pricing\":{{\"prompt\":\"",
                       first ? "" : ",", m.id, m.id, m.name, m.context_length, modality, output);
        append_decimal_pico(out, m.prompt_pico);
        put(out, "\",\"completion\":\"");
        append_decimal_pico(out, m.completion_pico);
        put(out, "\",\"request\":\"0\",\"image\":\"");
        append_decimal_pico(out, m.image_pico);
        put(out, "\",\"web_search\":\"0\",\"internal_reasoning\":\"0\",\"input_cache_read\":\"");
        append_decimal_pico(out, m.cache_read_pico);
        put(out, "\",\"input_cache_write\":\"");
        append_decimal_pico(out, m.cache_write_pico);
        if (m.kind == Kind::image && m.completion_pico > 0) {
            // An image model's output tokens are image output (gpt-image-1): OpenRouter's key
            // for that price. (`image` above is its price per generated image here; on
            // OpenRouter it is per image input.)
            put(out, "\",\"image_output\":\"");
            append_decimal_pico(out, m.completion_pico);
        }
        fmt::format_to(fmt::appender(out),
                       "\"}},"
                       "\"top_provider\":{{\"context_length\":{},\"max_completion_tokens\":16384,"
                       "\"is_moderated\":false}},\"per_request_limits\":null,"
                       "\"supported_parameters\":[\"max_tokens\",\"stream\",\"temperature\"]}}",
                       m.context_length);
        first = false;
    }
    put(out, "]}");
    return fmt::to_string(out);
}

void render_last(Buffer& out, std::string_view method, std::string_view target,
                 std::string_view authorization, const RecordedHeader (&headers)[kRecordedHeaderCount],
                 std::string_view body, std::uint64_t requests) {
    put(out, "{\"method\":");
    append_json_string(out, method);
    put(out, ",\"target\":");
    append_json_string(out, target);
    put(out, ",\"authorization\":");
    append_json_string(out, authorization);
    put(out, ",\"headers\":{");
    bool first = true;
    for (std::size_t i = 0; i < kRecordedHeaderCount; ++i) {
        if (!headers[i].present) continue;
        if (!first) out.push_back(',');
        first = false;
        append_json_string(out, kRecordedHeaders[i]);
        out.push_back(':');
        append_json_string(out, headers[i].value);
    }
    put(out, "},\"body\":");
    append_json_string(out, body);
    fmt::format_to(fmt::appender(out), ",\"requests\":{}}}", requests);
}

}  // namespace tollgate::stub
