"""Configuration of the one decoder that serves as teacher (all attention) and student (some Mamba-2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..checks import flag, real, whole
from ..errors import MmmambaError
from ..layers import AttentionConfig, Mamba2Config

MIXER_KINDS = ("attention", "mamba2")
# what one layer may set for itself (``DecoderConfig.layer_overrides``); hidden_size is shared by all
LAYER_FIELDS = ("num_heads", "num_kv_heads", "head_dim", "intermediate_size", "rope_theta", "norm_eps", "qkv_bias")

# Sizes beyond these are not a model anyone can run; ``check_fits`` catches the rest against memory.
LIMITS = {
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "num_layers": 1024,
    "num_heads": 1024,
    "num_kv_heads": 1024,
    "head_dim": 4096,
    "intermediate_size": 1 << 19,
    "max_position": 1 << 24,
}
VISION_LIMITS = {"image_size": 8192, "patch_size": 1024, "channels": 16, "min_tiles": 256, "max_tiles": 256}
MAMBA_LIMITS = {"conv_kernel": 256, "chunk_size": 1 << 16}
MAX_PATCHES = 1 << 16  # patches of one tile (a 256 x 256 grid); released models use about 1 000


VISION_STYLES = ("fuyu", "internvl", "hovle")


@dataclass
class VisionConfig:
    """Image front-end and its preprocessing.

    ``fuyu``: each patch linearly projected to one token, plus a learned position (our tiny teacher).
    ``internvl``: conv patch embedding + position embedding, pixel shuffle by ``downsample_ratio``,
    then an MLP projector (LayerNorm, Linear, GELU, Linear) — InternVL's mlp1 on raw patches.
    ``hovle``: HoVLE's released front-end: conv patch embedding + a position table stored with a
    class slot first (``position_grid``² + 1 rows; the slot is skipped, and the grid is resized
    bicubically when the image's patch grid differs), pixel shuffle, then Linear(4d→D), GELU,
    Linear(D→D) with no LayerNorm. Its ``class_embedding`` is kept (the weights have one) but unused.
    ``max_tiles`` > 1 turns on dynamic tiling: the image is cut into 1…max_tiles tiles of
    ``image_size`` chosen by aspect ratio, plus a thumbnail when there is more than one.
    """

    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    style: str = "fuyu"
    embed_dim: int = 0  # patch-embedding width for "internvl"; 0 = the decoder's hidden size
    downsample_ratio: float = 1.0  # "internvl": 0.5 merges each 2×2 block of patches into one token
    min_tiles: int = 1
    max_tiles: int = 1
    use_thumbnail: bool = False
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # pixel/255 normalisation
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    resample: str = "bilinear"  # PIL filter used to resize: "bilinear" | "bicubic"
    position_grid: int = 0  # "hovle": side of the stored position grid; 0 = image_size // patch_size

    def __post_init__(self):
        for key, high in VISION_LIMITS.items():
            setattr(self, key, whole(getattr(self, key), f"vision.{key}", 1, high))
        self.embed_dim = whole(self.embed_dim, "vision.embed_dim", 0, LIMITS["hidden_size"])
        self.position_grid = whole(self.position_grid, "vision.position_grid", 0, 256)
        self.downsample_ratio = real(self.downsample_ratio, "vision.downsample_ratio", 1 / 64, 1.0)
        self.use_thumbnail = flag(self.use_thumbnail, "vision.use_thumbnail")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if not isinstance(v, list) or len(v) not in (1, self.channels):
                raise MmmambaError(
                    f"vision.{key} must list one number, or one per channel ({self.channels}), got {v!r}"
                )
            setattr(self, key, [real(x, f"vision.{key}", 0 if key == "std" else None, low_open=True) for x in v])
        if self.style not in VISION_STYLES:
            raise MmmambaError(f"unknown vision style {self.style!r}; use one of {list(VISION_STYLES)}")
        if self.image_size % self.patch_size:
            raise MmmambaError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        merge = self.merge
        if self.style == "fuyu" and merge != 1:
            raise MmmambaError("pixel shuffle (downsample_ratio < 1) needs the 'internvl' vision style")
        if self.num_patches > MAX_PATCHES:
            raise MmmambaError(
                f"image_size {self.image_size} / patch_size {self.patch_size} makes {self.num_patches} patches a tile, "
                f"more than {MAX_PATCHES}; use a larger patch or a smaller image"
            )
        if (self.image_size // self.patch_size) % merge:
            raise MmmambaError(f"{self.image_size // self.patch_size} patches a side do not divide by {merge}")
        if not 1 <= self.min_tiles <= self.max_tiles:
            raise MmmambaError(
                f"tiles must satisfy 1 <= min_tiles <= max_tiles, got {self.min_tiles}, {self.max_tiles}"
            )
        if self.resample not in ("bilinear", "bicubic"):
            raise MmmambaError(f"resample {self.resample!r}: use 'bilinear' or 'bicubic'")
        if self.position_grid < 0 or (self.position_grid and self.style != "hovle"):
            raise MmmambaError(f"position_grid {self.position_grid}: only the 'hovle' style has one (>= 0)")

    @property
    def grid(self) -> int:
        """Patches a side of one tile."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def merge(self) -> int:
        """Side of the block of patches pixel shuffle merges into one token (1: none)."""
        return round(1 / self.downsample_ratio)

    @property
    def tokens_per_tile(self) -> int:
        """Placeholder tokens one tile (or thumbnail) occupies in the sequence."""
        return self.num_patches // self.merge**2


@dataclass(frozen=True)
class LayerSettings:
    """The settings one layer computes with: the config's defaults with its overrides applied."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float
    norm_eps: float
    qkv_bias: bool


def _check_override_value(key: str, value, where: str) -> None:
    if key == "qkv_bias":
        ok = isinstance(value, bool)
    elif key in ("rope_theta", "norm_eps"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    else:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not ok:
        raise MmmambaError(f"{where}: {key} = {value!r} is not a valid value; fix the config")


@dataclass
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    max_position: int = 4096
    mixers: list[str] = field(default_factory=list)  # per layer: "attention" | "mamba2"; empty = all attention
    mamba: dict = field(default_factory=dict)  # Mamba2Config options beyond the shapes (conv_kernel, …)
    vision: VisionConfig | None = None
    image_token_id: int | None = None
    conversion: dict = field(default_factory=dict)  # provenance written by the converter
    # Text embedding (HoVLE embeds text with its own table, not the LLM's): ``embed_tokens`` has
    # ``text_vocab_size`` rows (0: vocab_size, the plain lookup). When set, ids at or past it take a
    # row of ``special_embeddings`` (id − text_vocab_size) when there are ``special_embeddings`` rows,
    # else row 0 of ``embed_tokens`` — as HoVLE's official code computes it.
    text_vocab_size: int = 0
    special_embeddings: int = 0
    # layers after which every token's residual stream is divided by its L2 norm (no eps), e.g.
    # HoVLE's ``normalize_encoder_output`` between its holistic and LLM stacks: [holistic − 1]
    l2_norm_after: list[int] = field(default_factory=list)
    # Layers whose settings differ from the defaults above (e.g. HoVLE's holistic stack, configured
    # apart from its LLM): groups ``{"layers": [0, 1, …], "rope_theta": 1e4, …}`` with keys from
    # LAYER_FIELDS; a layer is in at most one group. Empty: every layer uses the defaults.
    layer_overrides: list[dict] = field(default_factory=list)

    def __post_init__(self):
        for key, high in LIMITS.items():
            setattr(self, key, whole(getattr(self, key), key, 1, high))
        if self.num_heads % self.num_kv_heads:
            raise MmmambaError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        self.rope_theta = real(self.rope_theta, "rope_theta", 0, low_open=True)
        self.norm_eps = real(self.norm_eps, "norm_eps", 0, 1.0, low_open=True)
        self.tie_embeddings = flag(self.tie_embeddings, "tie_embeddings")
        self.qkv_bias = flag(self.qkv_bias, "qkv_bias")
        if not isinstance(self.mixers, list) or not all(isinstance(m, str) for m in self.mixers):
            raise MmmambaError(f"mixers must be a list of {' / '.join(MIXER_KINDS)}, got {self.mixers!r}")
        for key in ("mamba", "conversion"):
            if not isinstance(getattr(self, key), dict):
                raise MmmambaError(f"{key} must be a JSON object, got {getattr(self, key)!r}")
        if not self.mixers:
            self.mixers = ["attention"] * self.num_layers
        if len(self.mixers) != self.num_layers:
            raise MmmambaError(f"config lists {len(self.mixers)} mixers for {self.num_layers} layers")
        bad = sorted(set(self.mixers) - set(MIXER_KINDS))
        if bad:
            raise MmmambaError(f"unknown mixer kind(s) {bad}; use one of {list(MIXER_KINDS)}")
        kept = self.conversion.get("keep_attention")
        attention_layers = [i for i, m in enumerate(self.mixers) if m == "attention"]
        if kept is not None and (
            not isinstance(kept, list) or [type(i) for i in kept] != [int] * len(kept) or kept != attention_layers
        ):
            raise MmmambaError(
                f"config conversion.keep_attention {kept!r} does not list the attention layers of mixers; "
                "it records which layers kept attention, so it must name those, in order"
            )
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if self.vision is not None and not isinstance(self.vision, VisionConfig):
            raise MmmambaError(f"vision must be a JSON object or null, got {self.vision!r}")
        if self.vision is not None and self.image_token_id is None:
            raise MmmambaError("a config with a vision front-end needs image_token_id")
        if self.image_token_id is not None:
            whole(self.image_token_id, "image_token_id", 0, self.vocab_size - 1)
        if self.vision is not None and self.vision.tokens_per_tile > self.max_position:
            raise MmmambaError(
                f"one image takes {self.vision.tokens_per_tile} tokens, more than max_position {self.max_position}; "
                "use a larger patch or a smaller image"
            )
        for key in ("text_vocab_size", "special_embeddings"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MmmambaError(f"config {key} must be an integer >= 0, got {value!r}")
        if not isinstance(self.l2_norm_after, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in self.l2_norm_after
        ):
            raise MmmambaError(f"config l2_norm_after must be a list of layer indices, got {self.l2_norm_after!r}")
        if self.special_embeddings and not self.text_vocab_size:
            raise MmmambaError("special_embeddings needs text_vocab_size (the id where special tokens start)")
        if self.tie_embeddings and self.text_vocab_size not in (0, self.vocab_size):
            raise MmmambaError("tie_embeddings needs a text table of vocab_size rows; untie or drop text_vocab_size")
        bad = [i for i in self.l2_norm_after if not 0 <= i < self.num_layers]
        if bad:
            raise MmmambaError(f"l2_norm_after {bad}: layers out of range for a {self.num_layers}-layer model")
        for key, high in MAMBA_LIMITS.items():
            if key in self.mamba:
                whole(self.mamba[key], f"mamba.{key}", 1, high)
        self._layer_settings = self._check_layer_overrides()
        for i in range(self.num_layers) if self.layer_overrides else [0]:
            self.mamba2_config(i)  # validate the options early (every layer's shapes when they differ)

    def _check_layer_overrides(self) -> dict[int, dict]:
        """layer index → its overrides, after checking the groups once."""
        if not isinstance(self.layer_overrides, list):
            raise MmmambaError(f"config layer_overrides must be a list of groups, got {self.layer_overrides!r}")
        per_layer: dict[int, dict] = {}
        for group in self.layer_overrides:
            where = f"config layer_overrides group {group!r}"
            if not isinstance(group, dict) or not isinstance(group.get("layers"), list) or not group["layers"]:
                raise MmmambaError(f"{where}: give a 'layers' list and the settings those layers use")
            unknown = sorted(set(group) - {"layers", *LAYER_FIELDS})
            if unknown:
                raise MmmambaError(f"{where}: unknown key(s) {unknown}; a layer may set {list(LAYER_FIELDS)}")
            for key, value in group.items():
                if key != "layers":
                    _check_override_value(key, value, where)
            for i in group["layers"]:
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_layers:
                    raise MmmambaError(f"{where}: layer {i!r} is out of range for a {self.num_layers}-layer model")
                if i in per_layer:
                    raise MmmambaError(f"{where}: layer {i} is in two groups; list each layer once")
                per_layer[i] = {k: v for k, v in group.items() if k != "layers"}
        for i, over in per_layer.items():
            s = self.layer(i, over)
            if s.num_heads % s.num_kv_heads:
                raise MmmambaError(
                    f"config layer {i}: num_heads {s.num_heads} is not a multiple of num_kv_heads {s.num_kv_heads}"
                )
        return per_layer

    def layer(self, i: int, overrides: dict | None = None) -> LayerSettings:
        """The settings layer ``i`` computes with."""
        over = self._layer_settings.get(i, {}) if overrides is None else overrides
        return LayerSettings(**{k: over.get(k, getattr(self, k)) for k in LAYER_FIELDS})

    def attention_config(self, i: int = 0) -> AttentionConfig:
        s = self.layer(i)
        return AttentionConfig(
            self.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim, s.qkv_bias, float(s.rope_theta)
        )

    def mamba2_config(self, i: int = 0) -> Mamba2Config:
        s = self.layer(i)
        options = {"norm_eps": s.norm_eps, **self.mamba}
        try:
            return Mamba2Config(self.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim, s.qkv_bias, **options)
        except (TypeError, ValueError) as e:
            raise MmmambaError(f"bad mamba options {self.mamba}: {e}") from None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["layer_overrides"]:  # a uniform model writes the config.json it always has
            del d["layer_overrides"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DecoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise MmmambaError(f"config has unknown field(s) {unknown}")
        try:
            return cls(**d)
        except TypeError as e:
            raise MmmambaError(f"config is incomplete: {e}") from None
