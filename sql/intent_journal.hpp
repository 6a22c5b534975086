#pragma once
// Exactly once across crashes: every admitted request is journaled as an intent, then marked sent
// just before its first byte goes upstream, its progress at least once a second while the
// response runs, and its end once
// its usage record is in the usage journal (sql/usage_writer). A process killed in between
// (kill -9, OOM, power cut of the process, not of the machine) leaves open intents; the next
// start turns each sent one into one usage row with status `interrupted`, and releases the
// hold of every one (proxy/recovery.cpp).
//
//   <journal_dir>/intents-<start µs>.jsonl, one JSON object per line, each one write(2) with
//   O_APPEND (no fsync on the request path: the same durability as the usage journal):
//     {"t":"i","id":request_id,"user":…,"key":…,"model":…,"at":µs,"hold":credit units,
//      "held":bool,"prompt":estimated prompt tokens,"meta":{request metadata}}
//     {"t":"s","id":…}                                  the first byte goes upstream now
//     {"t":"p","id":…,"d":delivered output events,"pt":prompt tokens the upstream reported or -1}
//     {"t":"e","id":…}
// A file is deleted once it is not the current one and every intent begun in it has ended; a
// file grows to 64 MiB before the next one starts. The folder is the usage journal's, whose
// lock makes this process its only writer.
#include "pricing/money.hpp"

#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tollgate::sql {

/// What a request's intent says (the "i" line), as recovery reads it back.
struct Intent {
  std::string request_id, user_id, api_key_id, model;
  std::int64_t created_at_us = 0;
  pricing::Micros hold = 0;          ///< the worst case held at admission: the charge's bound
  bool held_in_redis = false;        ///< a Redis hold to release (admission was on and answered)
  std::int64_t prompt_estimate = 0;  ///< prompt tokens estimated from the body (~4 bytes a token)
  std::string request_metadata_json = "{}";
};

/// An intent with no end: what its last progress line said.
struct OpenIntent {
  Intent intent;
  std::int64_t delivered = 0;       ///< output events that reached the client
  std::int64_t prompt_tokens = -1;  ///< as the upstream reported them; -1: not known
  bool sent = false;                ///< its request went upstream (else: no usage row, only the hold)
};

class IntentJournal {
 public:
  /// Reads what earlier processes left in `dir` (recover()) and opens this process' file.
  /// Throws std::runtime_error if the folder cannot be used.
  explicit IntentJournal(std::filesystem::path dir);
  ~IntentJournal();
  IntentJournal(const IntentJournal&) = delete;
  IntentJournal& operator=(const IntentJournal&) = delete;

  /// The intents earlier processes began and never ended, oldest first (read at construction).
  const std::vector<OpenIntent>& recovered() const { return recovered_; }
  /// Deletes the earlier processes' files: call once their open intents are in the usage
  /// journal (a crash before that recovers them again; request_id keeps the row unique).
  void forget_recovered();

  /// Journals an intent (thread-safe, one write). Call once the request holds a balance.
  void begin(const Intent& i);
  /// Journals that the request is about to go upstream (thread-safe, one write).
  void sent(std::string_view request_id);
  /// Journals progress of a begun intent (thread-safe, one write).
  void progress(std::string_view request_id, std::int64_t delivered, std::int64_t prompt_tokens);
  /// Journals the end of a begun intent, once its usage record (if any) is in the usage journal.
  void end(std::string_view request_id);

  std::uint64_t open() const;  ///< intents begun and not ended by this process

 private:
  struct File {
    std::filesystem::path path;
    int fd = -1;
    std::uint64_t bytes = 0, open = 0;
  };
  void write_locked(std::string_view line, std::uint64_t file);
  void roll_locked();

  std::filesystem::path dir_;
  std::vector<OpenIntent> recovered_;
  std::vector<std::filesystem::path> old_files_;
  mutable std::mutex mu_;
  std::map<std::uint64_t, File> files_;  ///< by start µs; the last is current
  std::unordered_map<std::string, std::uint64_t> file_of_;  ///< request_id → its intent's file
};

}  // namespace tollgate::sql
