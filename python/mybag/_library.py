"""Finds and loads mybag's compiled library, exactly once per process.

Loading the same library twice would register the ``mybag`` operators twice, which aborts; so
this checks the dispatcher before loading.
"""

import glob
import os

import torch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def library_path() -> str:
    """Path of the compiled library (``_C*.so``), also what C++ programs link against."""
    candidates = sorted(glob.glob(os.path.join(_PACKAGE_DIR, "_C*.so")))
    if not candidates:
        raise ImportError(
            f"mybag: no compiled library (_C*.so) in {_PACKAGE_DIR}; build it with "
            "`pip install --no-build-isolation -e .`"
        )
    return candidates[0]


def _already_registered() -> bool:
    return torch._C._dispatch_has_kernel("mybag::embedding_bag")


def load_library() -> None:
    if not _already_registered():
        torch.ops.load_library(library_path())


def build_note() -> str:
    """What setup.py said it built and why (e.g. why the CUDA kernels were left out), or ""."""
    import json

    try:
        with open(os.path.join(_PACKAGE_DIR, "_build_info.json")) as f:
            return json.load(f).get("note", "")
    except (OSError, ValueError):
        return ""
