"""Prints the CMake arguments that find the installed torch wheel's LibTorch.

    cmake -S . -B build/lib $(python scripts/torch_cmake_args.py)        # building mybag
    cmake -S app -B build/app $(python scripts/torch_cmake_args.py PREFIX)  # a consumer

A CUDA build of torch makes find_package(Torch) set up CUDA even when only CPU code is
compiled: these arguments point it at the local toolkit, at the wheel's copy of libnvrtc when
the toolkit has none, and give it the architecture list that setup.py would use
(scripts/build_config.py decides both). Extra prefixes (an installed mybag) come as arguments.
"""

import glob
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_config import cuda_arch_list, cuda_toolkit  # noqa: E402


def cmake_args(extra_prefixes):
    prefixes = list(extra_prefixes) + [torch.utils.cmake_prefix_path]
    args = [f"-DCMAKE_PREFIX_PATH={';'.join(prefixes)}"]
    toolkit = cuda_toolkit() if torch.version.cuda else None
    if toolkit:
        args.append(f"-DCUDA_TOOLKIT_ROOT_DIR={toolkit}")
        args.append(f"-DCMAKE_CUDA_COMPILER={os.path.join(toolkit, 'bin', 'nvcc')}")
        args.append(f"-DTORCH_CUDA_ARCH_LIST={cuda_arch_list()[0]}")
        if not glob.glob(os.path.join(toolkit, "lib*", "libnvrtc.so*")):
            site = os.path.dirname(os.path.dirname(torch.__file__))
            nvrtc = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so*")))
            nvrtc = [p for p in nvrtc if "builtins" not in p and ".alt." not in p]
            if nvrtc:
                args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}")
    return args


if __name__ == "__main__":
    print(" ".join(cmake_args(sys.argv[1:])))
