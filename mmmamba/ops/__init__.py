"""Math: the SSD recurrence (reference, chunked, fused Triton, single step) and the causal conv1d.

Every fast path shares the signature of its plain reference and is tested against it.
"""

from .conv import causal_conv1d, causal_conv1d_step
from .ssd import ssd_scan
from .ssd_chunked import ssd_chunked_scan
from .ssd_naive import ssd_naive_scan, ssd_step

__all__ = ["causal_conv1d", "causal_conv1d_step", "ssd_chunked_scan", "ssd_naive_scan", "ssd_scan", "ssd_step"]
