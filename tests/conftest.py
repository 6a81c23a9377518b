import pytest
import torch

from mmmamba.models import Decoder, DecoderConfig, VisionConfig


def tiny_config(**overrides) -> DecoderConfig:
    cfg = dict(
        vocab_size=61,
        hidden_size=32,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=48,
        rope_theta=10000.0,
        max_position=512,
        vision=VisionConfig(image_size=8, patch_size=4, channels=3),
        image_token_id=60,
    )
    cfg.update(overrides)
    return DecoderConfig(**cfg)


@pytest.fixture
def teacher() -> Decoder:
    torch.manual_seed(0)
    return Decoder(tiny_config()).double().eval()
