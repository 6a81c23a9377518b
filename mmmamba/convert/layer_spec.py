"""Parse ``--keep-attention`` specs: which layers of a hybrid stay softmax attention."""

from __future__ import annotations

from ..errors import MmmambaError

HELP = "none | every:N (0, N, 2N, …) | head:K | tail:K | auto:K (chosen after stage 2) | a list such as 0,4,8"


def parse_keep_attention(spec: str, num_layers: int) -> list[int]:
    """Layer indices to keep; ``auto:K`` is not a list yet (see ``parse_auto``) and yields []."""
    spec = spec.strip()
    if parse_auto(spec, num_layers) is not None:
        return []
    try:
        if spec in ("", "none"):
            layers = []
        elif spec.startswith("every:"):
            layers = list(range(0, num_layers, int(spec[6:])))
        elif spec.startswith("head:"):
            layers = list(range(int(spec[5:])))
        elif spec.startswith("tail:"):
            k = int(spec[5:])
            layers = list(range(num_layers - k, num_layers))
        else:
            layers = sorted({int(s) for s in spec.split(",")})
    except ValueError:
        raise MmmambaError(f"--keep-attention {spec!r} is not understood; use {HELP}") from None
    if ":" in spec:  # every:N needs N >= 1; head:K / tail:K need 0 <= K <= layers
        n, every = int(spec.split(":", 1)[1]), spec.startswith("every:")
        if n < int(every) or (not every and n > num_layers):
            bound = "1 or more" if every else f"between 0 and {num_layers}"
            raise MmmambaError(f"--keep-attention {spec!r}: the number must be {bound}")
    if any(not 0 <= i < num_layers for i in layers):
        raise MmmambaError(f"--keep-attention {spec!r} names layers outside 0..{num_layers - 1}")
    return layers


def parse_auto(spec: str, num_layers: int) -> int | None:
    """K of ``auto:K``, else None."""
    if not spec.strip().startswith("auto:"):
        return None
    try:
        k = int(spec.strip()[5:])
    except ValueError:
        raise MmmambaError(f"--keep-attention {spec!r}: K must be an integer") from None
    if not 0 <= k <= num_layers:
        raise MmmambaError(f"--keep-attention {spec!r}: K must be between 0 and {num_layers}")
    return k
