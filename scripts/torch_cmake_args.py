"""Prints the CMake arguments that find the installed torch wheel's LibTorch.

A CUDA build of torch makes find_package(Torch) look for the CUDA toolkit even when only CPU code
is compiled; these arguments point it at the local toolkit (nvcc's), and at the wheel's copy of
libnvrtc when the toolkit has none. Extra prefixes (an installed mybag) come as arguments.
"""

import glob
import os
import shutil
import sys

import torch


def cuda_toolkit():
    """The first CUDA toolkit that has headers: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, nvcc's."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for candidate in candidates:
        if candidate and os.path.exists(os.path.join(candidate, "include", "cuda_runtime.h")):
            return candidate
    return None


def cmake_args(extra_prefixes):
    prefixes = list(extra_prefixes) + [torch.utils.cmake_prefix_path]
    args = [f"-DCMAKE_PREFIX_PATH={';'.join(prefixes)}"]
    toolkit = cuda_toolkit() if torch.version.cuda else None
    if toolkit:
        args.append(f"-DCUDA_TOOLKIT_ROOT_DIR={toolkit}")
        if not glob.glob(os.path.join(toolkit, "lib*", "libnvrtc.so*")):
            site = os.path.dirname(os.path.dirname(torch.__file__))
            nvrtc = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so*")))
            nvrtc = [p for p in nvrtc if "builtins" not in p and ".alt." not in p]
            if nvrtc:
                args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}")
    return args


if __name__ == "__main__":
    print(" ".join(cmake_args(sys.argv[1:])))
