"""Parse ``--keep-attention`` specs: which layers of a hybrid stay softmax attention."""

from __future__ import annotations

import re

from ..errors import MmmambaError

NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: int() also reads "１" (fullwidth) and " 1"

HELP = "none | every:N (0, N, 2N, …) | head:K | tail:K | auto:K (chosen after stage 2) | a list such as 0,4,8"


def parse_keep_attention(spec: str, num_layers: int) -> list[int]:
    """Layer indices to keep; ``auto:K`` is not a list yet (see ``parse_auto``) and yields []."""
    spec = spec.strip()
    if parse_auto(spec, num_layers) is not None:
        return []
    if not spec:
        raise MmmambaError(f"--keep-attention is empty; use {HELP} (none: a linear student)")
    numbers = spec.split(":", 1)[1].split(",") if ":" in spec else [] if spec == "none" else spec.split(",")
    if not all(NUMBER.fullmatch(n.strip()) for n in numbers):
        raise MmmambaError(f"--keep-attention {spec!r} is not understood; use {HELP}")
    if spec.partition(":")[0] in ("every", "head", "tail") and ":" in spec:  # every:N >= 1; head/tail:K 0..layers
        n, every = int(numbers[0]), spec.startswith("every:")
        if n < int(every) or (not every and n > num_layers):
            bound = "1 or more" if every else f"between 0 and {num_layers}"
            raise MmmambaError(f"--keep-attention {spec!r}: the number must be {bound}")
    try:
        if spec == "none":
            layers = []
        elif spec.startswith("every:"):
            layers = list(range(0, num_layers, int(spec[6:])))
        elif spec.startswith("head:"):
            layers = list(range(int(spec[5:])))
        elif spec.startswith("tail:"):
            k = int(spec[5:])
            layers = list(range(num_layers - k, num_layers))
        else:
            listed = [int(s) for s in spec.split(",")]
            if len(set(listed)) != len(listed):
                raise MmmambaError(f"--keep-attention {spec!r} names a layer twice; list each layer once")
            layers = sorted(listed)
    except ValueError:
        raise MmmambaError(f"--keep-attention {spec!r} is not understood; use {HELP}") from None
    if any(not 0 <= i < num_layers for i in layers):
        raise MmmambaError(f"--keep-attention {spec!r} names layers outside 0..{num_layers - 1}")
    return layers


def parse_auto(spec: str, num_layers: int) -> int | None:
    """K of ``auto:K``, else None."""
    if not spec.strip().startswith("auto:"):
        return None
    if not NUMBER.fullmatch(spec.strip()[5:]):
        raise MmmambaError(f"--keep-attention {spec!r}: K must be a whole number")
    k = int(spec.strip()[5:])
    if not 1 <= k <= num_layers:
        raise MmmambaError(f"--keep-attention {spec!r}: K must be between 1 and {num_layers} (none: a linear student)")
    return k
