"""Math: the SSD recurrence (reference, chunked, fla's kernels, single step), the causal conv1d and decode attention.

Every fast path shares the signature of its plain reference and is tested against it.
"""

from .conv import causal_conv1d, causal_conv1d_step
from .ssd import ssd_scan
from .ssd_chunked import ssd_chunked_scan
from .ssd_naive import ssd_naive_scan, ssd_step

__all__ = ["causal_conv1d", "causal_conv1d_step", "ssd_chunked_scan", "ssd_naive_scan", "ssd_scan", "ssd_step"]
