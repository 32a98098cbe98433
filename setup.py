"""Builds mybag's one compiled library, python/mybag/_C*.so.

The library registers the ``mybag`` operators with PyTorch's dispatcher and has no Python
dependency (it is built against the limited API and never links libtorch_python), so the same
file serves ``import mybag`` (through ``torch.ops.load_library``) and C++ programs linked to
LibTorch. CMakeLists.txt builds the same sources: both take them from ``csrc/mybag`` by the
patterns in ``SOURCE_PATTERNS`` (and ``CUDA_SOURCE_PATTERNS``).

CUDA kernels are built when torch has CUDA and nvcc is found (no GPU is needed to build them).
``MYBAG_WITH_CUDA=1`` insists on them (the build fails if it cannot), ``MYBAG_WITH_CUDA=0``
leaves them out. Set ``TORCH_CUDA_ARCH_LIST`` (e.g. "9.0") on machines without a GPU, or torch
compiles for every architecture it knows.
"""

import glob
import os
import sys

import torch
import torch.utils.cpp_extension as cpp_extension
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Keep in step with CMakeLists.txt (MYBAG_SOURCES, MYBAG_CUDA_SOURCES).
SOURCE_PATTERNS = ["csrc/mybag/*.cpp", "csrc/mybag/cpu/*.cpp"]
CUDA_SOURCE_PATTERNS = ["csrc/mybag/cuda/*.cu"]


def source_files(patterns):
    files = []
    for pattern in patterns:
        files += sorted(glob.glob(os.path.join(ROOT, pattern)))
    return [os.path.relpath(f, ROOT) for f in files]


def nvcc_path():
    """nvcc of a CUDA toolkit with headers, pointing torch's extension builder at that toolkit.

    torch takes the toolkit from $CUDA_HOME, else from the directory above `which nvcc`; a
    wrapper script such as /usr/local/bin/nvcc leads it to /usr/local, which has no headers.
    The same search as the CMake build's (scripts/torch_cmake_args.py) finds the real one.
    """
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from torch_cmake_args import cuda_toolkit

    home = cpp_extension.CUDA_HOME
    if home is None or not os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
        home = cuda_toolkit()
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return None
    cpp_extension.CUDA_HOME = home
    return os.path.join(home, "bin", "nvcc")


def with_cuda():
    """Whether to build the CUDA kernels; raises when MYBAG_WITH_CUDA=1 cannot be honoured."""
    wanted = os.environ.get("MYBAG_WITH_CUDA", "auto").lower()
    if wanted not in ("auto", "0", "1"):
        raise RuntimeError(f"MYBAG_WITH_CUDA has to be 0, 1 or auto, but is {wanted!r}")
    if wanted == "0":
        print("mybag: MYBAG_WITH_CUDA=0, leaving the CUDA kernels out")
        return False
    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} was built without CUDA")
    if nvcc_path() is None:
        missing.append("no CUDA toolkit with nvcc and headers found (set CUDA_HOME)")
    if missing and wanted == "1":
        raise RuntimeError("mybag: MYBAG_WITH_CUDA=1 but the CUDA kernels cannot be built: "
                           + "; ".join(missing))
    if missing:
        print("mybag: leaving the CUDA kernels out: " + "; ".join(missing))
        return False
    return True


def extensions():
    debug = os.environ.get("MYBAG_DEBUG", "0") == "1"
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is header-inlined around `#pragma omp parallel`: without -fopenmp every
    # kernel would silently run on one thread. libgomp resolves to the copy torch already loaded.
    cxx_flags += ["-fopenmp"]
    sources = source_files(SOURCE_PATTERNS)
    print(f"mybag: building {len(sources)} C++ sources (CPU kernels)")
    extension = CppExtension
    compile_args = {"cxx": cxx_flags}
    if with_cuda():
        cuda_sources = source_files(CUDA_SOURCE_PATTERNS)
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "(torch's default: the visible GPUs, "
                               "else every architecture it supports)")
        print(f"mybag: building {len(cuda_sources)} CUDA sources with {nvcc_path()} "
              f"(CUDA {torch.version.cuda}) for TORCH_CUDA_ARCH_LIST={archs}")
        sources += cuda_sources
        extension = CUDAExtension
        compile_args["nvcc"] = (["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"])
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
