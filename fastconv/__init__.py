"""fastconv: hand-written convolution, pooling and batch-norm kernels for PyTorch."""

from fastconv import _ext  # noqa: F401  (registers torch.ops.fastconv.*)
from fastconv import _meta  # noqa: F401

__version__ = "0.1.0"
