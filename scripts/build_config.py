"""How mybag is built, decided in one place for setup.py and for the CMake build.

setup.py imports this module; the CMake route gets the same decisions through
scripts/torch_cmake_args.py, which prints them as CMake arguments. Three decisions:

- where the CUDA toolkit is (a toolkit with headers, not only an nvcc wrapper);
- whether to build the CUDA kernels (MYBAG_WITH_CUDA: auto, 1 or 0);
- for which GPU architectures (TORCH_CUDA_ARCH_LIST when the user sets it, else
  ``default_cuda_arch_list()``).
"""

import os
import re
import shutil
import subprocess

import torch


def cuda_toolkit():
    """The first CUDA toolkit that has headers: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, nvcc's.

    torch takes the toolkit from $CUDA_HOME, else from the directory above `which nvcc`; a
    wrapper script such as /usr/local/bin/nvcc leads it to /usr/local, which has no headers.
    """
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        # A wrapper script (exec /path/to/real/nvcc) hides the toolkit from realpath.
        candidates += _toolkits_named_in(nvcc)
    for candidate in candidates:
        if candidate and os.path.exists(os.path.join(candidate, "include", "cuda_runtime.h")) \
                and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    return None


def _toolkits_named_in(script):
    try:
        with open(script, errors="replace") as f:
            text = f.read(4096)
    except OSError:
        return []
    return [os.path.dirname(os.path.dirname(p)) for p in re.findall(r"(/\S+/bin/nvcc)\b", text)]


def cuda_plan():
    """(build the CUDA kernels?, why) from MYBAG_WITH_CUDA, torch and the toolkit.

    Raises RuntimeError when MYBAG_WITH_CUDA=1 cannot be honoured, or its value is unknown.
    """
    wanted = os.environ.get("MYBAG_WITH_CUDA", "auto").lower()
    if wanted not in ("auto", "0", "1"):
        raise RuntimeError(f"MYBAG_WITH_CUDA has to be 0, 1 or auto, but is {wanted!r}")
    if wanted == "0":
        return False, "MYBAG_WITH_CUDA=0"
    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is a CPU-only build")
    elif cuda_toolkit() is None:
        missing.append("no CUDA toolkit (nvcc and headers) found; set CUDA_HOME to use one")
    if missing and wanted == "1":
        raise RuntimeError("mybag: MYBAG_WITH_CUDA=1 but the CUDA kernels cannot be built: "
                           + "; ".join(missing))
    if missing:
        return False, "; ".join(missing)
    return True, f"torch {torch.__version__} has CUDA {torch.version.cuda} and nvcc is at " \
                 f"{os.path.join(cuda_toolkit(), 'bin', 'nvcc')}"


def _nvcc_architectures(toolkit):
    """The compute capabilities this nvcc can compile for, as (major, minor) pairs."""
    try:
        listed = subprocess.run([os.path.join(toolkit, "bin", "nvcc"), "--list-gpu-arch"],
                                capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = {(int(m[:-1]), int(m[-1])) for m in re.findall(r"compute_(\d+)", listed)}
    return found or None


def default_cuda_arch_list():
    """The architectures built when TORCH_CUDA_ARCH_LIST is not set, and why.

    With GPUs visible: theirs, as torch's extension builder would choose. Without (a build
    machine, a container, CI): one binary per GPU generation that this torch itself supports,
    at the generation's lowest version in torch's list, since a binary for X.y runs on every
    X.z with z >= y; plus PTX of the newest, which the driver compiles for later GPUs. Only
    architectures that this nvcc can compile for are kept.
    """
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i)
                       for i in range(torch.cuda.device_count())})
        why = "the visible GPUs"
    else:
        torch_caps = sorted({(int(a[3:-1]), int(a[-1]))
                             for a in torch.cuda.get_arch_list() if re.fullmatch(r"sm_\d+", a)})
        lowest_per_major = {}
        for major, minor in torch_caps:
            lowest_per_major.setdefault(major, (major, minor))
        caps = sorted(lowest_per_major.values())
        why = (f"no GPU visible: one per GPU generation torch {torch.__version__} supports "
               f"({', '.join(f'{a}.{b}' for a, b in torch_caps)})")
    toolkit = cuda_toolkit()
    supported = _nvcc_architectures(toolkit) if toolkit else None
    if supported is not None:
        caps = [c for c in caps if c in supported]
    if not caps:
        raise RuntimeError(
            f"mybag: no GPU architecture that both torch {torch.__version__} and this nvcc "
            "support; set TORCH_CUDA_ARCH_LIST (e.g. TORCH_CUDA_ARCH_LIST=9.0)")
    archs = [f"{major}.{minor}" for major, minor in caps]
    archs[-1] += "+PTX"
    return ";".join(archs), why


def cuda_arch_list():
    """(TORCH_CUDA_ARCH_LIST to build with, where it came from)."""
    chosen = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if chosen:
        return chosen, "TORCH_CUDA_ARCH_LIST"
    archs, why = default_cuda_arch_list()
    return archs, f"default: {why}; set TORCH_CUDA_ARCH_LIST to choose"


if __name__ == "__main__":
    # For CMakeLists.txt, when it is run without TORCH_CUDA_ARCH_LIST.
    import sys

    if sys.argv[1:] != ["cuda-arch-list"]:
        sys.exit("usage: python scripts/build_config.py cuda-arch-list")
    print(cuda_arch_list()[0] if torch.version.cuda else "")
