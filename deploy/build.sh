#!/usr/bin/env bash
# Configures and builds tollgate (Release, ccache) into build/; binaries land in build/bin.
# BUILD_DIR and CMAKE_BUILD_TYPE may be set to build elsewhere or otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
