"""Builds mybag's one compiled library, python/mybag/_C*.so.

The library registers the ``mybag`` operators with PyTorch's dispatcher and has no Python
dependency (it is built against the limited API and never links libtorch_python), so the same
file serves ``import mybag`` (through ``torch.ops.load_library``) and C++ programs linked to
LibTorch. CMakeLists.txt builds the same sources: both take them from ``csrc/mybag`` by the
patterns in ``SOURCE_PATTERNS`` (and ``CUDA_SOURCE_PATTERNS``).

What to build is decided in scripts/build_config.py, which the CMake route uses too: the
CUDA kernels when torch has CUDA and a CUDA toolkit is found (no GPU is needed to build them;
MYBAG_WITH_CUDA=1 insists, 0 leaves them out), for TORCH_CUDA_ARCH_LIST when it is set, else
for the visible GPUs, else for one architecture per GPU generation that torch supports.
"""

import glob
import json
import os
import sys

import torch
import torch.utils.cpp_extension as cpp_extension
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from build_config import cuda_arch_list, cuda_plan, cuda_toolkit  # noqa: E402

# CMakeLists.txt globs the same directories.
SOURCE_PATTERNS = ["csrc/mybag/*.cpp", "csrc/mybag/cpu/*.cpp"]
CUDA_SOURCE_PATTERNS = ["csrc/mybag/cuda/*.cu"]


def source_files(patterns):
    files = []
    for pattern in patterns:
        files += sorted(glob.glob(os.path.join(ROOT, pattern)))
    return [os.path.relpath(f, ROOT) for f in files]


def write_build_info(kernels, note):
    """Records what was built, for `python -m mybag` to say (pip shows no build output
    without -v)."""
    path = os.path.join(ROOT, "python", "mybag", "_build_info.json")
    with open(path, "w") as f:
        json.dump({"kernels": kernels, "note": note, "torch": torch.__version__}, f)
        f.write("\n")


def extensions():
    debug = os.environ.get("MYBAG_DEBUG", "0") == "1"
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is header-inlined around `#pragma omp parallel`: without -fopenmp every
    # kernel would silently run on one thread. libgomp resolves to the copy torch already loaded.
    cxx_flags += ["-fopenmp"]
    # No C++ code here reads errno: without this, GCC will not vectorize a loop that takes a
    # square root (the fused optimizers' updates).
    cxx_flags += ["-fno-math-errno"]
    sources = source_files(SOURCE_PATTERNS)
    extension = CppExtension
    compile_args = {"cxx": cxx_flags}
    build_cuda, why = cuda_plan()
    if build_cuda:
        # torch's extension builder reads the toolkit and the architectures from these.
        cpp_extension.CUDA_HOME = cuda_toolkit()
        archs, archs_why = cuda_arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        cuda_sources = source_files(CUDA_SOURCE_PATTERNS)
        note = f"CUDA kernels for TORCH_CUDA_ARCH_LIST={archs} ({archs_why})"
        print(f"mybag: building {len(sources)} C++ and {len(cuda_sources)} CUDA sources; {why}; "
              f"{note}")
        sources += cuda_sources
        extension = CUDAExtension
        compile_args["nvcc"] = (["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"])
        write_build_info(["CPU", "CUDA"], note)
    else:
        note = f"CUDA kernels left out: {why}"
        print(f"mybag: building {len(sources)} C++ sources, CPU kernels only ({note})")
        write_build_info(["CPU"], note)
    return [
        extension(
            name="mybag._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args=compile_args,
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
