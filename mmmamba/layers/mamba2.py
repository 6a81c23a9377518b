"""The Mamba-2 mixer carved out of an attention layer (mmMamba, SPEC §3).

Inherited from attention: q_proj → C, k_proj → B, v_proj → x, o_proj → output.
New: causal conv over [x, B, C], Δ = softplus(u·Wdt + dt_bias), A = −exp(A_log),
per-head gated RMSNorm with gate SiLU(u·Wg), optional D skip and q/k norm. ``gate_order``: norm-first
(the paper's, RMSNorm(y)·SiLU(gate)) or gate-first (Mamba-2's, RMSNorm(y·SiLU(gate))); serving engines
(transformers' GraniteMoeHybrid, vLLM, llama.cpp) compute gate-first.
GQA: B and x are repeated so every query head has its own pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import causal_conv1d, causal_conv1d_step, ssd_scan, ssd_step
from ..ops.mamba_step import ACTIVATIONS, mamba2_decode_step, resolve_decode_backend, scan_inputs
from ..ops.mamba_step import BACKENDS as DECODE_BACKENDS
from ..ops.regions import PREFILL_MODES, inference_mode_of, region
from ..ops.ssd import resolve_backend
from .norm import GATE_ORDERS
from .projections import add_qkvo_projections, fuse_linears


@dataclass
class Mamba2Config:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    conv_kernel: int = 2
    conv_bias: bool = True
    conv_activation: str = "silu"
    use_D: bool = False
    qk_norm: bool = False
    chunk_size: int = 64
    norm_eps: float = 1e-5
    dt_min: float = 1e-3
    dt_max: float = 0.1
    ssd_backend: str = "auto"  # the scan's implementation: auto | torch | fla (ops.ssd); a runtime choice
    gate_order: str = "norm-first"  # norm-first (paper) | gate-first (Mamba-2); configs without it: norm-first
    decode_backend: str = "auto"  # the decode step: auto | torch | triton (ops.mamba_step); a runtime choice
    prefill_mode: str = "eager"  # eager | compile: the work around the scan fused (ops.regions); a runtime choice

    def __post_init__(self):
        if self.conv_activation not in ACTIVATIONS:
            raise ValueError(f"conv_activation must be one of {sorted(ACTIVATIONS)}, got {self.conv_activation!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.conv_kernel < 1:
            raise ValueError("conv_kernel must be at least 1")
        if self.gate_order not in GATE_ORDERS:
            raise ValueError(f"gate_order must be one of {list(GATE_ORDERS)}, got {self.gate_order!r}")
        if self.decode_backend not in DECODE_BACKENDS:
            raise ValueError(f"decode_backend must be one of {list(DECODE_BACKENDS)}, got {self.decode_backend!r}")
        if self.prefill_mode not in PREFILL_MODES:
            raise ValueError(f"prefill_mode must be one of {list(PREFILL_MODES)}, got {self.prefill_mode!r}")

    @property
    def conv_dim(self) -> int:
        """Channels of the conv over [x (kv heads), B (kv heads), C (heads)]."""
        return (2 * self.num_kv_heads + self.num_heads) * self.head_dim


class Mamba2State(nn.Module):
    """Constant-size decoding state of one mixer: the conv window and the SSM state."""

    def __init__(self, batch: int, cfg: Mamba2Config, dtype, device=None):
        super().__init__()
        conv = torch.zeros(batch, cfg.conv_kernel - 1, cfg.conv_dim, dtype=dtype, device=device)
        state_dtype = torch.promote_types(dtype, torch.float32)  # the recurrence accumulates: keep it ≥ fp32
        ssm = torch.zeros(batch, cfg.num_heads, cfg.head_dim, cfg.head_dim, dtype=state_dtype, device=device)
        self.register_buffer("conv", conv, persistent=False)
        self.register_buffer("ssm", ssm, persistent=False)
        self.length = 0


def scan_dtype(u: Tensor) -> torch.dtype:
    """The dtype fla's kernels take q/k/v in: autocast's when it is on (bf16 training: twice the speed of
    fp32 inputs, and the dtype fla was tuned for), else the activations'. The torch scan runs in float32
    or wider whatever this says."""
    device = u.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else u.dtype


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        h, kvh, hd, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        add_qkvo_projections(self, d, h, kvh, hd, cfg.qkv_bias)
        self.conv_weight = nn.Parameter(torch.empty(cfg.conv_dim, cfg.conv_kernel))
        self.conv_bias = nn.Parameter(torch.zeros(cfg.conv_dim)) if cfg.conv_bias else None
        self.dt_proj = nn.Linear(d, h, bias=False)
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.A_log = nn.Parameter(torch.zeros(h))
        self.D = nn.Parameter(torch.ones(h)) if cfg.use_D else None
        self.g_proj = nn.Linear(d, h * hd, bias=False)
        self.out_norm = GATE_ORDERS[cfg.gate_order](hd, cfg.norm_eps)
        if cfg.qk_norm:
            self.q_norm = nn.Parameter(torch.ones(hd))
            self.k_norm = nn.Parameter(torch.ones(hd))
        nn.init.normal_(self.conv_weight, std=cfg.conv_kernel**-0.5)

    def parameter_groups(self) -> dict[str, list[str]]:
        """Every parameter's name, by role (distillation stages select roles, never names):
        ``inherited_qkv`` (Wq, Wk, Wv from attention), ``output`` (Wo) and ``new_ssm`` (all the rest:
        conv, Δ, A, gate, norms). A parameter added to the mixer lands in ``new_ssm``, trained from stage 1."""
        role = {"q_proj": "inherited_qkv", "k_proj": "inherited_qkv", "v_proj": "inherited_qkv", "o_proj": "output"}
        groups: dict[str, list[str]] = {"new_ssm": [], "inherited_qkv": [], "output": []}
        for name, _ in self.named_parameters():
            groups[role.get(name.split(".")[0], "new_ssm")].append(name)
        return groups

    def make_cache(self, batch: int, max_length: int, dtype, device=None) -> Mamba2State:
        """Same call as ``Attention.make_cache``; the state does not depend on ``max_length``."""
        return Mamba2State(batch, self.cfg, dtype, device)

    def _scan_inputs(self, xBC: Tensor, dt_in: Tensor, low_precision_ok: bool = False) -> tuple[Tensor, ...]:
        """Split the conv output into per-head x, B, C and compute Δ from u·Wdt; leading dims (...) kept.

        x, B, C are widened to float32 for the PyTorch scan; ``low_precision_ok`` (fla, which takes
        bf16 q/k/v and keeps its own fp32 state) leaves them in the model's dtype. Δ is always ≥ fp32.
        """
        cfg = self.cfg
        q_norm, k_norm = self._qk_norms()
        return scan_inputs(
            xBC, dt_in, self.dt_bias, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.conv_activation,
            q_norm, k_norm, cfg.norm_eps, low_precision_ok,
        )  # fmt: skip

    def _qk_norms(self) -> tuple[Tensor | None, Tensor | None]:
        """The q and k RMSNorm weights (for C and B), or (None, None) without q/k norm."""
        return (self.q_norm, self.k_norm) if self.cfg.qk_norm else (None, None)

    def _in_proj(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u (..., d) → xBC (..., conv_dim) = [x | B | C] before the conv, gate (..., h·hd), u·Wdt (..., h)."""
        cfg = self.cfg
        if hasattr(self, "in_weight"):  # fused by ``fuse_projections``: one read of the weights
            sizes = [cfg.conv_dim, cfg.num_heads * cfg.head_dim, cfg.num_heads]
            return F.linear(u, self.in_weight, self.in_bias).split(sizes, dim=-1)
        xBC = torch.cat([self.v_proj(u), self.k_proj(u), self.q_proj(u)], dim=-1)
        return xBC, self.g_proj(u), self.dt_proj(u)

    def _recurrent(self, xBC: Tensor, dt_in: Tensor, cache: Mamba2State, keep: Tensor | None = None):
        """One token per row, xBC (b, conv_dim) and dt_in (b, h) from ``_in_proj``: (y (b, h, hd), new conv
        state, new SSM state); ``keep`` (b, 1) zeroes Δ of padded rows. The cache is not written here."""
        xBC, conv_state = causal_conv1d_step(xBC, cache.conv, self.conv_weight, self.conv_bias)
        x, dt, B, C = self._scan_inputs(xBC, dt_in)
        if keep is not None:
            dt = dt * keep
        A = -torch.exp(self.A_log.to(dt.dtype))
        y, ssm_state = ssd_step(cache.ssm, x, dt, A, B, C, self.D)
        return y, conv_state, ssm_state

    def mix(
        self,
        u: Tensor,
        positions: Tensor | None = None,
        valid: Tensor | None = None,
        cache: Mamba2State | None = None,
        cu_seqlens: Tensor | None = None,
    ) -> Tensor:
        """Mixer output before the output projection, (b, L, h·head_dim).

        Same call as ``Attention.mix``; positions are unused (no RoPE in the mixer). ``valid``
        (b, past+L) marks real tokens: padded tokens get zero conv input and Δ = 0, so they
        leave the conv and SSM states exactly as they found them. ``cu_seqlens`` (n+1,) packs n
        samples into one row (b = 1, training: no cache): conv window and scan restart at each start.
        """
        if cu_seqlens is not None and cache is not None:
            raise ValueError("packed sequences (cu_seqlens) are for training; decode one sample per row")
        b, L, _ = u.shape
        cfg = self.cfg
        keep = None if valid is None else valid[:, -L:, None].to(u.dtype)
        if cache is not None and L == 1:  # recurrent decode
            xBC, gate, dt_in = self._in_proj(u)
            if keep is not None:
                xBC = xBC * keep
            y, conv_state, ssm_state = self._recurrent(
                xBC[:, 0], dt_in[:, 0], cache, None if keep is None else keep[:, 0]
            )
            y = y[:, None]
            mode = "eager"
        else:
            backend = resolve_backend(cfg.ssd_backend, u.device.type)
            mode = inference_mode_of(cfg.prefill_mode, cu_seqlens)
            conv_in = None if cache is None else cache.conv
            scan_in = region(Mamba2Mixer._scan_inputs_of, mode)
            x, dt, B, C, gate, conv_state = scan_in(self, u, keep, conv_in, cu_seqlens, backend == "fla")
            A = -torch.exp(self.A_log.to(torch.promote_types(u.dtype, torch.float32)))
            y, ssm_state = ssd_scan(
                x, dt, A, B, C, self.D, None if cache is None else cache.ssm, cfg.chunk_size, backend, cu_seqlens,
                scan_dtype(u),
            )  # fmt: skip
        if cache is not None:
            cache.conv.copy_(conv_state)
            cache.ssm.copy_(ssm_state)
            cache.length += L
        return region(Mamba2Mixer._output, mode)(self, y, gate, u.dtype)

    def _scan_inputs_of(
        self, u: Tensor, keep: Tensor | None, conv_state: Tensor | None, cu_seqlens: Tensor | None, fla: bool
    ) -> tuple[Tensor, ...]:
        """u (b, L, d) → the scan's x, Δ, B, C, the gate and the conv's final state: in-projection, the
        causal conv (restarting at each packed sample), its activation, q/k norm, the Δ softplus; ``keep``
        (b, L, 1) zeroes padded tokens' conv input and Δ."""
        xBC, gate, dt_in = self._in_proj(u)
        if keep is not None:
            xBC = xBC * keep
        xBC, conv_state = causal_conv1d(xBC, self.conv_weight, self.conv_bias, conv_state, cu_seqlens)
        x, dt, B, C = self._scan_inputs(xBC, dt_in, low_precision_ok=fla)
        if keep is not None:
            dt = dt * keep
        return x, dt, B, C, gate, conv_state

    def _output(self, y: Tensor, gate: Tensor, dtype: torch.dtype) -> Tensor:
        """y (b, L, h, hd) and the gate (b, L, h·hd) → the gated, normalised output (b, L, h·hd)."""
        gate = gate.unflatten(-1, (self.cfg.num_heads, self.cfg.head_dim))
        return self.out_norm(y.to(dtype), gate).flatten(-2)

    def step(self, u: Tensor, cache: Mamba2State, ctx=None) -> Tensor:
        """One token per row: u (b, d) → mixer output before o_proj (b, h·head_dim); updates ``cache`` in place.

        Static shapes, no host sync: the same call as ``Attention.step``, capturable in a CUDA graph.
        ``cfg.decode_backend`` triton: everything after the in-projection in one kernel (``ops.mamba_step``).
        """
        cfg = self.cfg
        xBC, gate, dt_in = self._in_proj(u)
        compiling = torch.compiler.is_compiling()  # auto under torch.compile: the PyTorch ops, which Inductor fuses
        q_norm, k_norm = self._qk_norms()
        return mamba2_decode_step(
            xBC, dt_in, gate, cache.conv, self.conv_weight, self.conv_bias, self.dt_bias, self.A_log, self.D,
            cache.ssm, self.out_norm.weight, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim, activation=cfg.conv_activation, q_norm=q_norm, k_norm=k_norm,
            norm_eps=cfg.norm_eps, gate_order=cfg.gate_order,
            backend=resolve_decode_backend(cfg.decode_backend, u.device.type, compiling),
        )  # fmt: skip

    def fuse_projections(self) -> None:
        """Decode reads v/k/q/gate/Δ weights in one matmul (rows as the official ``wvkqgdt``)."""
        if not hasattr(self, "in_weight"):
            fuse_linears(self, "in", [self.v_proj, self.k_proj, self.q_proj, self.g_proj, self.dt_proj])

    def forward(self, u: Tensor, positions=None, valid: Tensor | None = None, cache: Mamba2State | None = None):
        return self.o_proj(self.mix(u, positions, valid, cache))
