#!/usr/bin/env bash
# The C++ route exactly as the README gives it, then mybag's C++ tests:
#   1. the README's commands, word for word (tests/project/test_readme.py checks that they are): build
#      and install the library with CMake, then build and run the example as a consumer project
#      that finds the installed package with nothing but its prefix;
#   2. the C++ tests (tests/frontends/cpp), another such consumer, run with ctest.
# Build directories: build/lib, build/install, build/example, build/cpp-tests (kept, so later
# runs are incremental).
#
#   bash scripts/build_cpp.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== the README's C++ recipe"
cmake -S . -B build/lib $(python scripts/torch_cmake_args.py)
cmake --build build/lib -j2
cmake --install build/lib --prefix build/install
cmake -S examples/cpp -B build/example -DCMAKE_PREFIX_PATH=$PWD/build/install
cmake --build build/example -j2
./build/example/mybag_example

echo "== TorchScript model and expected values from Python -> build/cpp-tests/data"
python tests/frontends/cpp/make_scripted_model.py build/cpp-tests/data

echo "== C++ tests and the example, as a project consuming the installed package"
cmake -S tests/frontends/cpp -B build/cpp-tests -DCMAKE_PREFIX_PATH="$PWD/build/install" \
  -DMYBAG_TEST_DATA="$PWD/build/cpp-tests/data" -DMYBAG_EXAMPLE_DIR="$PWD/examples/cpp"
cmake --build build/cpp-tests -j2
ctest --test-dir build/cpp-tests --output-on-failure
