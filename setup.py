"""Builds mybag's one compiled library, python/mybag/_C*.so.

The library registers the ``mybag`` operators with PyTorch's dispatcher and has no Python
dependency (it is built against the limited API and never links libtorch_python), so the same
file serves ``import mybag`` (through ``torch.ops.load_library``) and C++ programs linked to
LibTorch. CMakeLists.txt builds the same sources: both take them from ``csrc/mybag`` by the
patterns in ``SOURCE_PATTERNS``.
"""

import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Keep in step with CMakeLists.txt (MYBAG_SOURCES).
SOURCE_PATTERNS = ["csrc/mybag/*.cpp", "csrc/mybag/cpu/*.cpp"]


def source_files():
    files = []
    for pattern in SOURCE_PATTERNS:
        files += sorted(glob.glob(os.path.join(ROOT, pattern)))
    return [os.path.relpath(f, ROOT) for f in files]


def extensions():
    debug = os.environ.get("MYBAG_DEBUG", "0") == "1"
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is header-inlined around `#pragma omp parallel`: without -fopenmp every
    # kernel would silently run on one thread. libgomp resolves to the copy torch already loaded.
    cxx_flags += ["-fopenmp"]
    sources = source_files()
    print(f"mybag: building {len(sources)} C++ sources (CPU kernels)")
    return [
        CppExtension(
            name="mybag._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
