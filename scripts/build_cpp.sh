#!/usr/bin/env bash
# Builds mybag with CMake, installs it as a package, builds the C++ tests and the example as
# separate projects that find it with find_package(mybag), and runs them with ctest.
#
#   bash scripts/build_cpp.sh [BUILD_DIR]     (default build/cpp)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="$(realpath -m "${1:-build/cpp}")"
mkdir -p "$BUILD"
JOBS="${MAX_JOBS:-2}"
# A CUDA torch wheel's CMake config wants an architecture list even for CPU-only code.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"

read -r -a LIB_ARGS <<<"$(python scripts/torch_cmake_args.py)"
read -r -a APP_ARGS <<<"$(python scripts/torch_cmake_args.py "$BUILD/install")"

echo "== mybag library (CMake) -> $BUILD/install"
cmake -S . -B "$BUILD/lib" "${LIB_ARGS[@]}" >"$BUILD/lib-configure.log" 2>&1 ||
  { cat "$BUILD/lib-configure.log"; exit 1; }
cmake --build "$BUILD/lib" -j "$JOBS"
cmake --install "$BUILD/lib" --prefix "$BUILD/install" >/dev/null

echo "== TorchScript model and expected values from Python -> $BUILD/data"
python tests/cpp/make_scripted_model.py "$BUILD/data"

echo "== C++ tests and the example, as projects consuming the installed package"
cmake -S tests/cpp -B "$BUILD/tests" "${APP_ARGS[@]}" -DMYBAG_TEST_DATA="$BUILD/data" \
  -DMYBAG_EXAMPLE_DIR="$PWD/examples/cpp" >"$BUILD/tests-configure.log" 2>&1 ||
  { cat "$BUILD/tests-configure.log"; exit 1; }
cmake --build "$BUILD/tests" -j "$JOBS"
ctest --test-dir "$BUILD/tests" --output-on-failure
