"""The C++ side, driven from pytest so that one test command covers everything.

scripts/build_cpp.sh runs the README's C++ commands word for word (build and install mybag with
CMake, build and run the example as a project that finds the installed package by its prefix
alone), then builds tests/frontends/cpp as another such project and runs it with ctest: the C++ API
against torch::nn::functional::embedding_bag, the C++ module against torch::nn::EmbeddingBag, the
fused-optimizer module against torch::nn::EmbeddingBag + torch::optim, the quantized functional
form and module against torch's prepack and quantized ops and F::embedding_bag over the unpacked
table, a TorchScript model saved in Python loaded, run and trained in C++, and the example
program. The build directories (build/lib, build/cpp-tests, ...) are kept, so later runs are
incremental.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CTEST_NAMES = [
    "test_functional",
    "test_module",
    "test_fused",
    "test_quantized",
    "test_torchscript",
    "example",
]


@pytest.fixture(scope="module")
def ctest_output():
    if shutil.which("cmake") is None:
        pytest.fail("the C++ tests need cmake (pip install 'cmake<4')")
    result = subprocess.run(
        ["bash", "scripts/build_cpp.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"scripts/build_cpp.sh failed:\n{output[-8000:]}"
    return output


@pytest.mark.parametrize("name", CTEST_NAMES)
def test_ctest_case_passed(ctest_output, name):
    line = re.search(rf"Test\s+#\d+: {re.escape(name)} \.+\s*(\S+)", ctest_output)
    assert line is not None, f"ctest ran no test named {name!r}:\n{ctest_output[-4000:]}"
    assert line.group(1) == "Passed", line.group(0)


def test_ctest_ran_every_case(ctest_output):
    summary = re.search(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)", ctest_output)
    assert summary is not None, ctest_output[-4000:]
    assert summary.group(2) == "0"
    assert int(summary.group(3)) >= len(CTEST_NAMES)
