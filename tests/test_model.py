import math

import pytest
import torch

from tinylm.config import ModelConfig
from tinylm.model import GPT


def small(**overrides) -> ModelConfig:
    cfg = ModelConfig(vocab_size=50, context=16, n_layer=2, n_head=4, d_model=32)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_shapes_and_initial_loss_near_uniform():
    torch.manual_seed(0)
    model = GPT(small())
    idx, targets = torch.randint(0, 50, (2, 3, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 50)
    assert abs(loss.item() - math.log(50)) < 0.2  # small init: close to a uniform guess
    _, none = model(idx)
    assert none is None


def test_changing_a_future_token_never_changes_earlier_logits():
    torch.manual_seed(0)
    model = GPT(small(dropout=0.1)).eval()
    idx = torch.randint(0, 50, (2, 16))
    base, _ = model(idx)
    for t in range(16):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 7) % 50
        logits, _ = model(changed)
        assert torch.allclose(logits[:, :t], base[:, :t], atol=1e-6), f"position {t} leaked backwards"
        if t < 15:
            assert not torch.allclose(logits[:, t:], base[:, t:])


def test_parameter_count_matches_the_architecture():
    cfg = small()
    model = GPT(cfg)
    d, f, L, V, T = cfg.d_model, cfg.ff_width, cfg.n_layer, cfg.vocab_size, cfg.context
    per_block = (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d  # attn, mlp, 2 LNs
    expected = V * d + T * d + L * per_block + 2 * d  # tied head adds nothing
    assert model.num_params() == expected
    assert model.num_params(non_embedding=True) == expected - V * d - T * d
    untied = GPT(small(tie_weights=False))
    assert untied.num_params() == expected + V * d
    no_bias = GPT(small(bias=False))
    assert no_bias.num_params() < expected


def test_weight_tying_and_gpt2_init():
    torch.manual_seed(0)
    model = GPT(small(n_layer=8, d_model=64))
    assert model.head.weight is model.tok_emb.weight
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    scaled = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(scaled, rel=0.15)
    assert model.blocks[3].mlp.proj.weight.std().item() == pytest.approx(scaled, rel=0.15)
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)


def test_sequence_longer_than_the_context_is_refused():
    model = GPT(small())
    with pytest.raises(ValueError, match="exceeds the model's context 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = GPT(small(dropout=0.5))
    idx = torch.randint(0, 50, (2, 16))
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])


def test_ignore_index_targets():
    torch.manual_seed(0)
    model = GPT(small())
    idx = torch.randint(0, 50, (1, 16))
    targets = idx.clone()
    targets[:, :8] = -1
    logits, loss = model(idx, targets)
    manual = torch.nn.functional.cross_entropy(logits[0, 8:], idx[0, 8:])
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
