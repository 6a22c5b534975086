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

/// Built-in model catalogue; prices are USD per token expressed in 1e-12 USD units.
struct ModelInfo {
    std::string_view id;
    std::string_view name;
    std::uint64_t context_length;
    std::uint64_t prompt_pico;
    std::uint64_t completion_pico;
};

constexpr ModelInfo kModels[] = {
    {"openai/gpt-4o-mini", "OpenAI: GPT-4o-mini", 128000, 150'000, 600'000},
    {"openai/gpt-4o", "OpenAI: GPT-4o", 128000, 2'500'000, 10'000'000},
    {"anthropic/claude-3.5-sonnet", "Anthropic: Claude 3.5 Sonnet", 200000, 3'000'000, 15'000'000},
    {"meta-llama/llama-3.1-8b-instruct", "Meta: Llama 3.1 8B Instruct", 131072, 20'000, 50'000},
    {"openai/text-embedding-3-small", "OpenAI: Text Embedding 3 Small", 8191, 20'000, 0},
};

const ModelInfo* find_model(std::string_view id) {
    for (const auto& m : kModels)
        if (m.id == id) return &m;
    return nullptr;
}

constexpr std::uint64_t kPicoPerUnit = 1'000'000'000'000ULL;
constexpr std::int64_t kMaxChunks = 1'000'000;
constexpr std::int64_t kMaxDelayMs = 600'000;

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

/// Bytes of a chat message's content: a string, or the text parts of a content-part array.
std::uint64_t message_content_bytes(dom::element message) {
    dom::element content;
    if (!message.is_object() || !lookup(message.get_object().value_unsafe(), "content", content))
        return 0;
    if (std::string_view s; content.get_string().get(s) == simdjson::SUCCESS) return s.size();
    std::uint64_t bytes = 0;
    if (dom::array parts; content.get_array().get(parts) == simdjson::SUCCESS) {
        for (dom::element part : parts) {
            std::string_view type, text;
            if (part["type"].get_string().get(type) == simdjson::SUCCESS && type == "text" &&
                part["text"].get_string().get(text) == simdjson::SUCCESS)
                bytes += text.size();
        }
    }
    return bytes;
}

/// Writes `"id":"gen-N","object":"...","created":T,"model":M,"provider":"Stub",` after `{`.
void append_envelope(Buffer& out, const Plan& p, std::string_view object) {
    fmt::format_to(fmt::appender(out), "{{\"id\":\"gen-{}\",\"object\":\"{}\",\"created\":{},\"model\":",
                   p.gen, object, p.created);
    put(out, p.model_json);
    put(out, ",\"provider\":\"Stub\",");
}

void append_usage(Buffer& out, const Plan& p) {
    fmt::format_to(fmt::appender(out),
                   "\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},"
                   "\"prompt_tokens_details\":{{\"cached_tokens\":0}},"
                   "\"completion_tokens_details\":{{\"reasoning_tokens\":0}},\"cost\":",
                   p.prompt_tokens, p.completion_tokens, p.prompt_tokens + p.completion_tokens);
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
    p.completion_tokens = 0;
    p.truncated = false;
    p.inputs = 0;

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
    } else {
        std::uint64_t bytes = 0, count = 0;
        if (endpoint == Endpoint::chat) {
            if (dom::element msgs; lookup(obj, "messages", msgs)) {
                dom::array arr;
                if (msgs.get_array().get(arr) != simdjson::SUCCESS) return "messages must be an array";
                for (dom::element m : arr) {
                    bytes += message_content_bytes(m);
                    ++count;
                }
            }
            p.prompt_tokens = approx_tokens(bytes) + 4 * count;
        } else {
            if (dom::element prompt; lookup(obj, "prompt", prompt) && !add_text_bytes(prompt, bytes, count))
                return "prompt must be a string or an array of strings";
            p.prompt_tokens = approx_tokens(bytes);
        }

        std::int64_t cap = -1;
        if (auto err = read_int(obj, "max_tokens", 0, kMaxChunks, cap); !err.empty()) return err;
        if (auto err = read_int(obj, "max_completion_tokens", 0, kMaxChunks, cap); !err.empty())
            return err;
        p.completion_tokens = static_cast<std::uint64_t>(chunks);
        if (cap >= 0 && cap < chunks) {
            p.completion_tokens = static_cast<std::uint64_t>(cap);
            p.truncated = true;
        }
    }

    p.cost_pico = info ? p.prompt_tokens * info->prompt_pico + p.completion_tokens * info->completion_pico
                       : 0;
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

std::string_view render_status_failure(Buffer& out, const Plan& p, int status) {
    if (p.has_error_body) {
        put(out, p.error_body);
        return p.error_content_type.empty() ? std::string_view("text/plain") : std::string_view(p.error_content_type);
    }
    if (p.error_json.empty()) {
        render_error(out, status, "stub failure");
    } else {
        put(out, "{\"error\":");
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

std::string render_models() {
    Buffer out;
    put(out, "{\"data\":[");
    bool first = true;
    for (const auto& m : kModels) {
        const bool embedding = m.completion_pico == 0;
        fmt::format_to(fmt::appender(out),
                       "{}{{\"id\":\"{}\",\"canonical_slug\":\"{}\",\"name\":\"{}\",\"created\":1700000000,"
                       "\"description\":\"tollgate-stub model\",\"context_length\":{},"
                       "\"architecture\":{{\"modality\":\"{}\",\"input_modalities\":[\"text\"],"
                       "\"output_modalities\":[\"{}\"],\"tokenizer\":\"Other\",\"instruct_type\":null}},"
                       "\"pricing\":{{\"prompt\":\"",
                       first ? "" : ",", m.id, m.id, m.name, m.context_length,
                       embedding ? "text->embeddings" : "text->text", embedding ? "embeddings" : "text");
        append_decimal_pico(out, m.prompt_pico);
        put(out, "\",\"completion\":\"");
        append_decimal_pico(out, m.completion_pico);
        fmt::format_to(fmt::appender(out),
                       "\",\"request\":\"0\",\"image\":\"0\",\"web_search\":\"0\",\"internal_reasoning\":\"0\","
                       "\"input_cache_read\":\"0\",\"input_cache_write\":\"0\"}},"
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
                 std::string_view authorization, std::string_view body, std::uint64_t requests) {
    put(out, "{\"method\":");
    append_json_string(out, method);
    put(out, ",\"target\":");
    append_json_string(out, target);
    put(out, ",\"authorization\":");
    append_json_string(out, authorization);
    put(out, ",\"body\":");
    append_json_string(out, body);
    fmt::format_to(fmt::appender(out), ",\"requests\":{}}}", requests);
}

}  // namespace tollgate::stub
