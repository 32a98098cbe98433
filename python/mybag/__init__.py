"""mybag: torch.nn.functional.embedding_bag as the custom operator torch.ops.mybag.embedding_bag.

Importing this package loads mybag's compiled library, which registers the ``mybag`` operators
(CPU and CUDA kernels, autograd, Meta kernels for torch.compile) with PyTorch's dispatcher.
"""

from mybag._library import library_path, load_library

load_library()

from mybag.functional import embedding_bag  # noqa: E402
from mybag.fused import FusedEmbeddingBag, fused_embedding_bag  # noqa: E402
from mybag.modules import EmbeddingBag, swap_embedding_bags  # noqa: E402
from mybag.quantized import (  # noqa: E402
    QuantizedEmbeddingBag,
    dequantize_rowwise,
    quantize_rowwise,
    quantized_embedding_bag,
)
from mybag.value_checks import (  # noqa: E402
    cuda_value_checks,
    cuda_value_checks_enabled,
    set_cuda_value_checks,
)

__all__ = [
    "EmbeddingBag",
    "FusedEmbeddingBag",
    "QuantizedEmbeddingBag",
    "cuda_value_checks",
    "cuda_value_checks_enabled",
    "dequantize_rowwise",
    "embedding_bag",
    "fused_embedding_bag",
    "library_path",
    "quantize_rowwise",
    "quantized_embedding_bag",
    "set_cuda_value_checks",
    "swap_embedding_bags",
]
__version__ = "0.1.0"
