"""The Mamba-2 mixer's decode step after its in-projection, one token per row: the reference and one fused kernel.

After the in-projection GEMV, ``Mamba2Mixer.step`` runs the conv step, the activation, the split into x/B/C
with x and B shared by the query heads of a KV group (GQA), the optional q/k RMSNorm, Δ = softplus(u·Wdt +
dt_bias), the state update S = exp(Δ·A)·S + Δ·x·Bᵀ, y = S·C (+ D·x) and the gated per-head RMSNorm: about
seven small kernels a layer, each costing a launch more than its work (issue #27). ``triton`` does all of it
in one launch, reading both states and writing them back in place; ``torch`` is the plain reference, composed
of the same pieces as ``Mamba2Mixer._recurrent`` + ``out_norm``; ``auto`` = triton on CUDA when Triton is
installed, torch otherwise. The choice is configuration (``Mamba2Config.decode_backend``), never the
environment. Inference only: the kernel has no backward.

Shapes (b rows, h heads, kvh KV heads, hd = head_dim, k = conv kernel, conv_dim = (2·kvh + h)·hd):
    xBC (b, conv_dim)           [x (kvh·hd) | B (kvh·hd) | C (h·hd)] before the conv, as ``_scan_inputs`` splits it
    dt_in (b, h)                u·Wdt, before dt_bias and softplus
    gate (b, h·hd)              u·Wg
    conv_state (b, k−1, conv_dim), conv_weight (conv_dim, k), conv_bias (conv_dim,) or None
    dt_bias, A_log (h,); D (h,) or None
    ssm_state (b, h, hd, hd)    float32 (float64 for a float64 model), S[p, n]: p indexes x, n indexes B and C
    norm_weight, q_norm, k_norm (hd,)
Returns (b, h·hd) in xBC's dtype.

The kernel, one program per (row, KV head): the program reads the conv window of its KV head's x and B channels
once and serves every query head of the group from it (blocks of ``block_heads`` heads, each a
(block_heads, hd, hd) fp32 state tile in registers). Every conv-state channel and every SSM state belongs to
exactly one program (x/B channels to their KV head's, C channels and states to their query head's, which is in
that same program), so the in-place updates race with no other program; inside the program a barrier orders
every thread's reads of the old window and state before any write of the new ones. Computed in float32 (float64
when the state is), rounded once at the end; the reference rounds to the model's dtype between its pieces, so in
bf16 the two differ by bf16 rounding. Offsets are 64-bit: b·h·hd² passes 2^31 at large batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import MmmambaError
from .conv import causal_conv1d_step
from .norm import GATE_ORDERS, gated_rms_norm, rms_norm
from .ssd_naive import ssd_step

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs run the torch reference
    triton = None

BACKENDS = ("auto", "torch", "triton")
ACTIVATIONS = {"silu": F.silu, "identity": lambda t: t}  # the conv's activation (Mamba2Config.conv_activation)


def resolve_decode_backend(backend: str, device_type: str, compiling: bool = False) -> str:
    """The concrete backend (``torch`` or ``triton``) for tensors on ``device_type``.

    ``auto`` is triton on CUDA, except while ``torch.compile`` traces the step (``compiling``): Inductor fuses
    the PyTorch ops with the in-projection around them, and the opaque kernel would stop that. On an H200 at
    HoVLE's shape a linear student's decode step took 2.04 ms compiled with the PyTorch ops against 2.19 ms
    compiled with the kernel, and 3.11 ms in a CUDA graph with the kernel against 5.01 ms without it
    (BENCHMARKS.md §1).
    """
    if backend not in BACKENDS:
        raise MmmambaError(f"Mamba-2 decode backend {backend!r} is unknown; use one of {list(BACKENDS)}")
    if backend == "auto":
        return "triton" if device_type == "cuda" and triton is not None and not compiling else "torch"
    if backend == "triton" and triton is None:
        raise MmmambaError("Mamba-2 decode backend 'triton' needs Triton: pip install triton (CUDA)")
    return backend


def scan_inputs(
    xBC: Tensor, dt_in: Tensor, dt_bias: Tensor, num_heads: int, num_kv_heads: int, head_dim: int,
    activation: str = "silu", q_norm: Tensor | None = None, k_norm: Tensor | None = None, norm_eps: float = 1e-5,
    low_precision_ok: bool = False,
) -> tuple[Tensor, ...]:  # fmt: skip
    """The conv output xBC (..., conv_dim) and u·Wdt (..., h) → the scan's x, Δ, B, C: activation, split into
    per-head x, B, C (x and B shared by a KV group's query heads), optional q/k RMSNorm, Δ = softplus(u·Wdt +
    dt_bias); leading dims kept. x, B, C are widened to float32 for the PyTorch scan; ``low_precision_ok`` (fla,
    which takes bf16 q/k/v and keeps its own fp32 state) leaves them in the model's dtype. Δ is always ≥ fp32."""
    h, kvh, hd = num_heads, num_kv_heads, head_dim
    xBC = ACTIVATIONS[activation](xBC)
    x, B, C = xBC.split([kvh * hd, kvh * hd, h * hd], dim=-1)
    # (..., kvh·hd) → (..., h, hd): each query head gets its KV head's x and B
    x = x.unflatten(-1, (kvh, hd)).repeat_interleave(h // kvh, dim=-2)
    B = B.unflatten(-1, (kvh, hd)).repeat_interleave(h // kvh, dim=-2)
    C = C.unflatten(-1, (h, hd))
    if q_norm is not None:
        B, C = rms_norm(B, k_norm, norm_eps), rms_norm(C, q_norm, norm_eps)
    dt = F.softplus(dt_in + dt_bias)
    # the scan runs in at least float32 (exp of decay sums, long accumulations); output is cast back
    scan_dtype = torch.promote_types(dt_in.dtype, torch.float32)
    io_dtype = xBC.dtype if low_precision_ok else scan_dtype
    return x.to(io_dtype), dt.to(scan_dtype), B.to(io_dtype), C.to(io_dtype)


def mamba2_decode_step_reference(
    xBC: Tensor, dt_in: Tensor, gate: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
    dt_bias: Tensor, A_log: Tensor, D: Tensor | None, ssm_state: Tensor, norm_weight: Tensor, *,
    num_heads: int, num_kv_heads: int, head_dim: int, activation: str = "silu", q_norm: Tensor | None = None,
    k_norm: Tensor | None = None, norm_eps: float = 1e-5, gate_order: str = "norm-first",
) -> Tensor:  # fmt: skip
    """Plain PyTorch: the conv step, ``scan_inputs``, the SSD step and the gated norm, as ``Mamba2Mixer`` composes
    them; the states are updated in place."""
    h, hd = num_heads, head_dim
    dtype = xBC.dtype
    xBC, new_conv = causal_conv1d_step(xBC, conv_state, conv_weight, conv_bias)
    x, dt, B, C = scan_inputs(xBC, dt_in, dt_bias, h, num_kv_heads, hd, activation, q_norm, k_norm, norm_eps)
    A = -torch.exp(A_log.to(dt.dtype))
    y, new_ssm = ssd_step(ssm_state, x, dt, A, B, C, D)
    conv_state.copy_(new_conv)
    ssm_state.copy_(new_ssm)
    out = gated_rms_norm(y.to(dtype), gate.unflatten(-1, (h, hd)), norm_weight, norm_eps, gate_order)
    return out.flatten(-2)


if triton is not None:

    @triton.jit
    def _silu(v):
        return v / (1.0 + tl.exp(-v))

    @triton.jit
    def _softplus(v):
        """torch's softplus (threshold 20): log1p(exp(v)), with log1p by Kahan's trick (no libdevice: the
        interpreter runs it too), and v itself past 20."""
        z = tl.exp(tl.minimum(v, 20.0))
        w = 1.0 + z
        return tl.where(v > 20.0, v, tl.where(w == 1.0, z, tl.log(w) * z / (w - 1.0)))

    @triton.jit
    def _conv_window(
        XBC_ROW, CONV_ROW, W, BIAS, ch, ok, stride_ck, stride_wc, stride_wk,
        K: tl.constexpr, K_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, COMPUTE: tl.constexpr,
    ):  # fmt: skip
        """Channels ``ch`` (M,) (mask ``ok``): the window (K_PAD, M), rows 0…k−2 the conv state and row k−1 the
        new input, and activation(Σ taps·weight + bias) (M,) in COMPUTE."""
        tap = tl.arange(0, K_PAD)[:, None]
        c = ch[None, :]
        m = ok[None, :]
        past = tl.load(CONV_ROW + tap * stride_ck + c, mask=m & (tap < K - 1), other=0.0)
        new = tl.load(XBC_ROW + c + tap * 0, mask=m & (tap == K - 1), other=0.0)
        win = past + new
        w = tl.load(W + c * stride_wc + tap * stride_wk, mask=m & (tap < K), other=0.0)
        v = tl.sum(win.to(COMPUTE) * w.to(COMPUTE), axis=0)
        if HAS_BIAS:
            v += tl.load(BIAS + ch, mask=ok, other=0.0).to(COMPUTE)
        if SILU:
            v = _silu(v)
        return win, v

    @triton.jit
    def _conv_shift(CONV_ROW, win, ch, ok, stride_ck, K: tl.constexpr, K_PAD: tl.constexpr):
        """The window's rows 1…k−1 become the new conv state (call after a barrier: all reads are done)."""
        tap = tl.arange(0, K_PAD)[:, None]
        tl.store(CONV_ROW + (tap - 1) * stride_ck + ch[None, :], win, mask=ok[None, :] & (tap >= 1) & (tap < K))

    @triton.jit
    def _decode_step_kernel(
        XBC, DT_IN, GATE, CONV, W, BIAS, DT_BIAS, A_LOG, D, SSM, NORM_W, Q_NORM, K_NORM, OUT,
        stride_xb, stride_tb, stride_gb, stride_cb, stride_ck, stride_wc, stride_wk,
        stride_sb, stride_sh, stride_sp, stride_ob, eps,
        KVH: tl.constexpr, G: tl.constexpr, HD: tl.constexpr, HD_PAD: tl.constexpr, HB: tl.constexpr,
        K: tl.constexpr, K_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, QK_NORM: tl.constexpr,
        SILU: tl.constexpr, GATE_FIRST: tl.constexpr, COMPUTE: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)  # one (row, KV head); the group's G query heads in blocks of HB
        r = (pid // KVH).to(tl.int64)  # 64-bit: r · stride_sb passes 2^31 at large batch
        kv = (pid % KVH).to(tl.int64)
        p = tl.arange(0, HD_PAD)
        p_ok = p < HD
        xbc = XBC + r * stride_xb
        conv = CONV + r * stride_cb
        # x and B of this KV head: read once, shared by the group's query heads (GQA); their conv channels
        # belong to this program alone
        x_ch = kv * HD + p
        b_ch = (KVH + kv) * HD + p
        x_win, x = _conv_window(xbc, conv, W, BIAS, x_ch, p_ok, stride_ck, stride_wc, stride_wk,
                                K, K_PAD, HAS_BIAS, SILU, COMPUTE)  # fmt: skip
        b_win, Bv = _conv_window(xbc, conv, W, BIAS, b_ch, p_ok, stride_ck, stride_wc, stride_wk,
                                 K, K_PAD, HAS_BIAS, SILU, COMPUTE)  # fmt: skip
        if QK_NORM:
            k_w = tl.load(K_NORM + p, mask=p_ok, other=0.0).to(COMPUTE)
            Bv = Bv / tl.sqrt(tl.sum(Bv * Bv, axis=0) / HD + eps) * k_w
            q_w = tl.load(Q_NORM + p, mask=p_ok, other=0.0).to(COMPUTE)
        n_w = tl.load(NORM_W + p, mask=p_ok, other=0.0).to(COMPUTE)
        f = tl.arange(0, HB * HD_PAD)  # a block of HB query heads × head_dim, flattened for the conv
        for g0 in tl.static_range(0, G, HB):
            g = g0 + tl.arange(0, HB)
            g_ok = g < G
            head = kv * G + g  # (HB,)
            fg = g0 + f // HD_PAD
            c_ch = 2 * KVH * HD + (kv * G + fg) * HD + f % HD_PAD
            c_ok = (fg < G) & (f % HD_PAD < HD)
            c_win, C = _conv_window(xbc, conv, W, BIAS, c_ch, c_ok, stride_ck, stride_wc, stride_wk,
                                    K, K_PAD, HAS_BIAS, SILU, COMPUTE)  # fmt: skip
            C = tl.reshape(C, (HB, HD_PAD))
            if QK_NORM:
                C = C / tl.sqrt(tl.sum(C * C, axis=1, keep_dims=True) / HD + eps) * q_w[None, :]
            dt = tl.load(DT_IN + r * stride_tb + head, mask=g_ok, other=0.0).to(COMPUTE)
            dt = _softplus(dt + tl.load(DT_BIAS + head, mask=g_ok, other=0.0).to(COMPUTE))
            decay = tl.exp(-dt * tl.exp(tl.load(A_LOG + head, mask=g_ok, other=0.0).to(COMPUTE)))  # exp(Δ·A)
            hp_ok = g_ok[:, None] & p_ok[None, :]  # (HB, HD_PAD)
            # a 64-bit base per block, 32-bit offsets within it (64-bit ones per element spill registers)
            ssm = SSM + r * stride_sb + (kv * G + g0) * stride_sh
            gl = tl.arange(0, HB)
            s_off = gl[:, None, None] * stride_sh + p[None, :, None] * stride_sp + p[None, None, :]
            s_ok = hp_ok[:, :, None] & p_ok[None, None, :]
            S = tl.load(ssm + s_off, mask=s_ok, other=0.0).to(COMPUTE)  # (HB, hd, hd): S[p, n]
            z = tl.load(GATE + r * stride_gb + head[:, None] * HD + p[None, :], mask=hp_ok, other=0.0)
            S = decay[:, None, None] * S + (dt[:, None] * x[None, :])[:, :, None] * Bv[None, None, :]
            y = tl.sum(S * C[:, None, :], axis=2)  # (HB, hd)
            if HAS_D:
                y += tl.load(D + head, mask=g_ok, other=0.0).to(COMPUTE)[:, None] * x[None, :]
            z = _silu(z.to(COMPUTE))
            if GATE_FIRST:  # RMSNorm(y·SiLU(gate))·w
                y = y * z
                out = y / tl.sqrt(tl.sum(y * y, axis=1, keep_dims=True) / HD + eps) * n_w[None, :]
            else:  # RMSNorm(y)·w·SiLU(gate)
                out = y / tl.sqrt(tl.sum(y * y, axis=1, keep_dims=True) / HD + eps) * n_w[None, :] * z
            tl.debug_barrier()  # every thread has read the old window and state before any is overwritten
            _conv_shift(conv, c_win, c_ch, c_ok, stride_ck, K, K_PAD)
            tl.store(ssm + s_off, S, mask=s_ok)
            tl.store(OUT + r * stride_ob + head[:, None] * HD + p[None, :], out, mask=hp_ok)
        _conv_shift(conv, x_win, x_ch, p_ok, stride_ck, K, K_PAD)  # after the first block's barrier
        _conv_shift(conv, b_win, b_ch, p_ok, stride_ck, K, K_PAD)

    def _launch(
        xBC: Tensor, dt_in: Tensor, gate: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
        dt_bias: Tensor, A_log: Tensor, D: Tensor | None, ssm_state: Tensor, norm_weight: Tensor,
        q_norm: Tensor | None, k_norm: Tensor | None, num_heads: int, num_kv_heads: int, head_dim: int,
        silu: bool, norm_eps: float, gate_first: bool, block_heads: int, num_warps: int,
    ) -> Tensor:  # fmt: skip
        b, hd = xBC.shape[0], head_dim
        out = xBC.new_empty(b, num_heads * hd)
        k = conv_weight.shape[1]
        dummy = dt_bias  # a pointer for the absent optional tensors (never read: their flags are off)
        _decode_step_kernel[(b * num_kv_heads,)](
            xBC, dt_in, gate, conv_state, conv_weight,
            dummy if conv_bias is None else conv_bias, dt_bias, A_log, dummy if D is None else D, ssm_state,
            norm_weight, dummy if q_norm is None else q_norm, dummy if k_norm is None else k_norm, out,
            xBC.stride(0), dt_in.stride(0), gate.stride(0), conv_state.stride(0), conv_state.stride(1),
            conv_weight.stride(0), conv_weight.stride(1),
            ssm_state.stride(0), ssm_state.stride(1), ssm_state.stride(2), out.stride(0), norm_eps,
            KVH=num_kv_heads, G=num_heads // num_kv_heads, HD=hd, HD_PAD=triton.next_power_of_2(hd), HB=block_heads,
            K=k, K_PAD=max(2, triton.next_power_of_2(k)), HAS_BIAS=conv_bias is not None, HAS_D=D is not None,
            QK_NORM=q_norm is not None, SILU=silu, GATE_FIRST=gate_first,
            COMPUTE=tl.float64 if ssm_state.dtype == torch.float64 else tl.float32,
            num_warps=num_warps,
        )  # fmt: skip
        return out

    # torch.compile sees the launch as one opaque op that mutates the two states (no tracing into Triton)
    _fused_op = torch.library.custom_op("mmmamba::mamba2_decode_step", mutates_args=("conv_state", "ssm_state"))(
        _launch
    )

    @_fused_op.register_fake
    def _(xBC, dt_in, gate, conv_state, conv_weight, conv_bias, dt_bias, A_log, D, ssm_state, norm_weight,
          q_norm, k_norm, num_heads, num_kv_heads, head_dim, silu, norm_eps, gate_first, block_heads,
          num_warps):  # fmt: skip
        return xBC.new_empty(xBC.shape[0], num_heads * head_dim)


def _check(xBC, dt_in, gate, conv_state, conv_weight, ssm_state, h, kvh, hd, activation, q_norm, k_norm, gate_order):
    """Shapes and layouts the kernel assumes (host-side, from shapes only: no sync)."""
    if h % kvh:
        raise ValueError(f"num_heads {h} is not a multiple of num_kv_heads {kvh}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if gate_order not in GATE_ORDERS:
        raise ValueError(f"gate_order must be one of {list(GATE_ORDERS)}, got {gate_order!r}")
    if (q_norm is None) != (k_norm is None):
        raise ValueError("q_norm and k_norm come together (both weights or neither)")
    b, conv_dim, k = xBC.shape[0], (2 * kvh + h) * hd, conv_weight.shape[-1]
    want = {
        "xBC": (xBC, (b, conv_dim)), "dt_in": (dt_in, (b, h)), "gate": (gate, (b, h * hd)),
        "conv_state": (conv_state, (b, k - 1, conv_dim)), "conv_weight": (conv_weight, (conv_dim, k)),
        "ssm_state": (ssm_state, (b, h, hd, hd)),
    }  # fmt: skip
    for name, (t, shape) in want.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
        if t.stride(-1) != 1 and t.numel():
            raise ValueError(f"{name} needs a contiguous last dimension (stride {t.stride(-1)})")
    if ssm_state.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"ssm_state must be float32 or float64, got {ssm_state.dtype}")


def mamba2_decode_step_triton(
    xBC: Tensor, dt_in: Tensor, gate: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
    dt_bias: Tensor, A_log: Tensor, D: Tensor | None, ssm_state: Tensor, norm_weight: Tensor, *,
    num_heads: int, num_kv_heads: int, head_dim: int, activation: str = "silu", q_norm: Tensor | None = None,
    k_norm: Tensor | None = None, norm_eps: float = 1e-5, gate_order: str = "norm-first",
    block_heads: int | None = None, num_warps: int | None = None,
) -> Tensor:  # fmt: skip
    """The fused kernel; same call and result as the reference. ``block_heads`` (a power of two): query heads
    a program holds at once (default: as many of the group as fit a 16 K-element state tile, one head at
    head_dim 128); ``num_warps``: default 32 state values a thread, 4 to 16 warps. (sm_90 with ptxas: a 128 × 128
    tile on 16 warps takes 127 registers and no spill; two heads at once, 2 × 128 × 128 on 16 warps, spill.)"""
    if triton is None:
        raise MmmambaError("the fused Mamba-2 decode step needs Triton: pip install triton")
    h, kvh, hd = num_heads, num_kv_heads, head_dim
    _check(xBC, dt_in, gate, conv_state, conv_weight, ssm_state, h, kvh, hd, activation, q_norm, k_norm, gate_order)
    hd_pad = triton.next_power_of_2(hd)
    if block_heads is None:
        fit = max(1, (1 << 14) // (hd_pad * hd_pad))
        block_heads = min(triton.next_power_of_2(h // kvh), 1 << (fit.bit_length() - 1))
    if block_heads < 1 or block_heads & (block_heads - 1):
        raise ValueError(f"block_heads must be a power of two, got {block_heads}")
    if num_warps is None:
        num_warps = min(16, max(4, block_heads * hd_pad * hd_pad // 1024))
    params = [t.contiguous() if t is not None else None for t in (conv_weight, conv_bias, dt_bias, A_log, D)]
    norms = [t.contiguous() if t is not None else None for t in (norm_weight, q_norm, k_norm)]
    # eagerly the launch itself (no dispatcher on the hot path); under torch.compile the custom op
    launch = _fused_op if torch.compiler.is_compiling() else _launch
    conv_weight, conv_bias, dt_bias, A_log, D = params
    norm_weight, q_norm, k_norm = norms
    return launch(
        xBC, dt_in, gate, conv_state, conv_weight, conv_bias, dt_bias, A_log, D, ssm_state, norm_weight,
        q_norm, k_norm, h, kvh, hd, activation == "silu", float(norm_eps), gate_order == "gate-first",
        block_heads, num_warps,
    )  # fmt: skip


def mamba2_decode_step(
    xBC: Tensor, dt_in: Tensor, gate: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
    dt_bias: Tensor, A_log: Tensor, D: Tensor | None, ssm_state: Tensor, norm_weight: Tensor, *,
    num_heads: int, num_kv_heads: int, head_dim: int, activation: str = "silu", q_norm: Tensor | None = None,
    k_norm: Tensor | None = None, norm_eps: float = 1e-5, gate_order: str = "norm-first", backend: str = "auto",
) -> Tensor:  # fmt: skip
    """One token per row (shapes in the module docstring): the gated, normalized mixer output (b, h·hd) before
    o_proj; ``conv_state`` and ``ssm_state`` are updated in place. Static shapes, no host sync."""
    kind = resolve_decode_backend(backend, xBC.device.type)
    fn = mamba2_decode_step_triton if kind == "triton" else mamba2_decode_step_reference
    return fn(
        xBC, dt_in, gate, conv_state, conv_weight, conv_bias, dt_bias, A_log, D, ssm_state, norm_weight,
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, activation=activation,
        q_norm=q_norm, k_norm=k_norm, norm_eps=norm_eps, gate_order=gate_order,
    )  # fmt: skip
