#pragma once
// Phase 5 (forward) is declared with the other phases in proxy/phase.hpp; its helpers for the
// relay are in proxy/relay.hpp.
#include "proxy/phase.hpp"
