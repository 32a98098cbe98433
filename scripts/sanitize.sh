#!/usr/bin/env bash
# Builds mybag's CPU library with AddressSanitizer + UndefinedBehaviorSanitizer into a separate
# directory (python/mybag/_C.so is never touched) and runs the Python test suite against it.
#
#   bash scripts/sanitize.sh                 # build (if needed) + run the CPU tests
#   SANITIZE_TESTS=tests/op/test_fuzz.py bash scripts/sanitize.sh -x   # extra arguments go to pytest
#
# Environment:
#   SANITIZE_DIR   where the instrumented build lives (default build/sanitize); reused while
#                  HEAD (or, for the working tree, every source file) is unchanged
#   SANITIZE_TREE  "head" (default): build the committed sources (git archive HEAD);
#                  "worktree": build the working tree as it is
#   SANITIZE_OPT   optimization for the instrumented build: "debug" (-O0 -g, the default:
#                  fast to compile, exact stacks) or "release" (setup.py's -O3, plus -g)
#   SANITIZE_TESTS what pytest collects (default "tests"), e.g. "tests/op/test_scale.py"
#   SANITIZE_BUILD_ONLY=1  build, do not run the tests
#   MAX_JOBS       parallel compile jobs (default 1: gentle on a shared 2-core machine)
#
# CPython is not instrumented, so libasan is LD_PRELOADed into the interpreter; leak detection
# is off (CPython and torch keep allocations alive on purpose); allocator_may_return_null=1 lets
# the simulated out-of-memory tests (2**50-row gradients) fail in torch, as without ASan.
# Every report goes to a log file under $SANITIZE_DIR/reports; the script fails if pytest
# fails OR if any report was written.
# CUDA tests and tests/frontends/test_cpp.py (a CMake build of its own) are left out.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

SANITIZE_DIR="${SANITIZE_DIR:-$ROOT/build/sanitize}"
SANITIZE_OPT="${SANITIZE_OPT:-debug}"
export MAX_JOBS="${MAX_JOBS:-1}"
SRC="$SANITIZE_DIR/src"
LIB="$SANITIZE_DIR/lib"
REPORTS="$SANITIZE_DIR/reports"
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g"

LIBASAN="$(gcc -print-file-name=libasan.so)"
if [[ ! -e "$LIBASAN" ]]; then
  echo "sanitize.sh: libasan not found (gcc -print-file-name=libasan.so gave '$LIBASAN')" >&2
  exit 2
fi

# What the library is built from: the committed trees of its sources (a commit that touches
# only tests or docs does not force a rebuild), and which tree kind.
source_key() {
  echo "$(git rev-parse HEAD:csrc HEAD:setup.py HEAD:python | tr '\n' ' ')${SANITIZE_TREE:-head}"
}

needs_build() {
  local so="$LIB/mybag/_C.so"
  [[ -f "$so" ]] || return 0
  # Other library sources, or the other tree kind: rebuild. The working tree: rebuild when a source
  # is newer than the library.
  [[ "$(cat "$SANITIZE_DIR/built_from" 2>/dev/null)" != "$(source_key)" ]] ||
    { [[ "${SANITIZE_TREE:-head}" == "worktree" ]] &&
      [[ -n "$(find csrc setup.py -newer "$so" -type f -print -quit)" ]]; }
}

if needs_build; then
  echo "sanitize.sh: building the instrumented library in $SANITIZE_DIR (MAX_JOBS=$MAX_JOBS)"
  rm -rf "$SRC" "$LIB" "$SANITIZE_DIR/temp"
  mkdir -p "$SRC" "$LIB"
  # A snapshot of the sources, so that edits during the (slow) build do not mix in: the
  # committed tree (HEAD) by default, the working tree with SANITIZE_TREE=worktree.
  if [[ "${SANITIZE_TREE:-head}" == "worktree" ]]; then
    cp -r csrc setup.py pyproject.toml scripts python "$SRC/"
  else
    git archive HEAD | tar -x -C "$SRC"
  fi
  export MYBAG_WITH_CUDA=0   # the CPU library (setup.py builds CUDA kernels when it can)
  if [[ "$SANITIZE_OPT" == "debug" ]]; then export MYBAG_DEBUG=1; else export MYBAG_DEBUG=0; fi
  # setuptools appends CFLAGS/CPPFLAGS to every compile line and LDFLAGS to the link line;
  # setup.py's own flags (-O0 -g or -O3, -fopenmp) still apply.
  (
    cd "$SRC"
    CFLAGS="$SAN_FLAGS" CPPFLAGS="$SAN_FLAGS" LDFLAGS="-fsanitize=address,undefined" \
      python setup.py build_ext --build-lib "$LIB" --build-temp "$SANITIZE_DIR/temp" -v \
      > "$SANITIZE_DIR/build.log" 2>&1
  ) || { tail -50 "$SANITIZE_DIR/build.log"; echo "sanitize.sh: build failed" >&2; exit 1; }
  # The Python package (of the same snapshot) next to the library.
  cp -r "$SRC"/python/mybag/. "$LIB/mybag/"
  rm -rf "$LIB/mybag/_C"*.so.orig
  # Prove the flags reached the compiler and the linker.
  source_key > "$SANITIZE_DIR/built_from"
  compiles=$(grep -c -- '-fsanitize=address,undefined.* -c ' "$SANITIZE_DIR/build.log" || true)
  sources=$(grep -c '^\[[0-9]*/[0-9]*\] c++' "$SANITIZE_DIR/build.log" || true)
  echo "sanitize.sh: $compiles of $sources compile lines carry -fsanitize=address,undefined"
  if [[ "$sources" -eq 0 || "$compiles" -lt "$sources" ]]; then
    echo "sanitize.sh: the sanitizer flags did not reach every compile line" >&2
    exit 1
  fi
fi
instrumented=$(nm -D "$LIB/mybag/_C.so" | grep -c ' U __asan_report\| U __ubsan_handle' || true)
if [[ "$instrumented" -eq 0 ]]; then
  echo "sanitize.sh: $LIB/mybag/_C.so is not instrumented" >&2
  exit 1
fi

if [[ "${SANITIZE_BUILD_ONLY:-0}" == "1" ]]; then
  echo "sanitize.sh: built $LIB/mybag/_C.so (SANITIZE_BUILD_ONLY=1: not running the tests)"
  exit 0
fi

rm -rf "$REPORTS"
mkdir -p "$REPORTS"
export PYTHONPATH="$LIB${PYTHONPATH:+:$PYTHONPATH}"
# libstdc++ is preloaded too: ASan's __cxa_throw interceptor has to find the real one when it
# starts, before the interpreter dlopens anything C++ (else: "CHECK failed ... real___cxa_throw").
export LD_PRELOAD="$LIBASAN $(gcc -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=0:halt_on_error=1:log_path=$REPORTS/asan:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:verify_asan_link_order=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan"
export MYBAG_SANITIZED=1   # tests that only measure (RSS) or need > 8 GiB under ASan skip

python - <<'EOF'
import mybag, os
print("sanitize.sh: testing", os.path.dirname(mybag.__file__))
EOF

set +e
# shellcheck disable=SC2086
python -m pytest ${SANITIZE_TESTS:-tests} -q -p no:cacheprovider --ignore=tests/frontends/test_cpp.py \
  -k "not cuda" "$@"
status=$?
set -e

# A report is an error (ASan "ERROR:", UBSan "runtime error:", a "SUMMARY:" line or a failed
# internal CHECK). allocator_may_return_null=1 also logs "WARNING: AddressSanitizer failed to
# allocate 0x... bytes" for each refused huge request (the simulated OOM tests): counted apart.
reported_files() {
  grep -l -E 'ERROR: |runtime error:|SUMMARY: |CHECK failed' "$REPORTS"/* 2>/dev/null || true
}
reports=$(reported_files | wc -l)
refused=$({ cat "$REPORTS"/* 2>/dev/null || true; } |
  { grep -c 'WARNING: AddressSanitizer failed to allocate' || true; })
echo "sanitize.sh: pytest exit status $status, sanitizer reports: $reports" \
     "(refused huge allocations, expected: $refused)"
if [[ "$reports" -gt 0 ]]; then
  for f in $(reported_files); do
    echo "==== $f"; head -60 "$f"
  done
  exit 1
fi
exit "$status"
