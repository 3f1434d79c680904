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


# --------------------------------------------------------------------------- variants


import itertools  # noqa: E402

from tinylm.model.gpt import apply_rotary, rotary_cos_sin, sinusoidal_embedding  # noqa: E402

VARIANTS = list(itertools.product(["layernorm", "rmsnorm"], ["pre", "post"], ["gelu", "gelu_tanh", "swiglu"], [0, 2, 1],
                                  [False, True]))


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "none"])
def test_every_variant_trains_decodes_with_a_cache_and_matches_manual_attention(pos):
    """For each position type, every combination of norm, placement, MLP, key/value heads and
    QK-norm: a finite loss and gradients, cached incremental logits equal to the full forward
    pass, and the manual attention path equal to scaled_dot_product_attention."""
    for norm, placement, mlp, kv, qk in VARIANTS:
        torch.manual_seed(0)
        cfg = small(pos=pos, norm=norm, norm_position=placement, mlp=mlp, n_kv_head=kv, qk_norm=qk)
        cfg.validate()
        model = GPT(cfg)
        idx = torch.randint(0, 50, (2, 16))
        _, loss = model(idx, idx)
        loss.backward()
        assert math.isfinite(loss.item()) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
        model.eval()
        with torch.no_grad():
            full, _ = model(idx)
            cache = model.new_cache(2)
            parts = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 16)]
            cached = torch.cat(parts, dim=1)
            assert torch.allclose(cached, full, atol=1e-4), (pos, norm, placement, mlp, kv, qk)
            model.cfg.attention = "manual"
            manual, _ = model(idx)
            assert torch.allclose(manual, full, atol=1e-5), ("manual", pos, norm, placement, mlp, kv, qk)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "none"])
def test_rows_of_different_lengths_in_a_per_row_cache_equal_each_prompt_alone(pos):
    """A right-padded batch in a per-row cache (each row at its own length) decodes each row as it
    would decode alone: padding after a row's tokens is never attended to, and each row counts its
    positions from its own first token (what the generation engine batches rows with)."""
    torch.manual_seed(0)
    model = GPT(small(pos=pos)).eval()
    short, long = torch.randint(0, 50, (1, 5)), torch.randint(0, 50, (1, 9))
    batch = torch.cat([torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], 1), long])
    with torch.no_grad():
        alone_short, _ = model(short)
        alone_long, _ = model(long)
        cache = model.new_cache(2).rows(0, 2)  # per-row lengths, both 0
        logits, _ = model(batch, cache=cache)
        assert torch.allclose(logits[0, :5], alone_short[0], atol=1e-5)
        assert torch.allclose(logits[1], alone_long[0], atol=1e-5)
        cache.lengths.copy_(torch.tensor([5, 9]))  # the rows' real lengths: the padding is forgotten
        nxt = torch.randint(0, 50, (2, 1))
        step, _ = model(nxt, cache=cache)
        assert torch.allclose(step[0, 0], model(torch.cat([short, nxt[:1]], 1))[0][0, -1], atol=1e-5)
        assert torch.allclose(step[1, 0], model(torch.cat([long, nxt[1:]], 1))[0][0, -1], atol=1e-5)
        assert cache.lengths.tolist() == [6, 10] and torch.isfinite(logits).all()


def test_variant_shapes_and_parameter_counts():
    d = 64
    gqa = GPT(small(d_model=d, n_head=4, n_kv_head=1))
    assert gqa.blocks[0].attn.qkv.weight.shape == (d + 2 * d // 4, d)  # 4 query heads, 1 key/value head
    swiglu = small(d_model=96, mlp="swiglu")
    assert swiglu.ff_width == 256 and GPT(swiglu).blocks[0].mlp.fc.weight.shape == (512, 96)
    assert small(d_model=96, mlp="swiglu", d_ff=100).ff_width == 128  # rounded up to a multiple of 64
    rms = GPT(small(norm="rmsnorm"))
    assert isinstance(rms.ln_f, torch.nn.RMSNorm) and rms.pos_emb is not None
    assert GPT(small(pos="rope")).pos_emb is None and GPT(small(pos="rope")).num_params() < GPT(small()).num_params()
    torch.manual_seed(0)
    xavier = GPT(small(init="xavier", d_model=64))
    bound = math.sqrt(6 / (64 + 3 * 64))
    assert xavier.blocks[0].attn.qkv.weight.abs().max().item() <= bound
    assert xavier.blocks[0].attn.qkv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    model = GPT(small())
    c = model.cfg
    assert model.flops_per_token() == 6 * (model.num_params(True) + c.vocab_size * c.d_model) \
        + 12 * c.n_layer * c.d_model * c.context


def test_position_encodings_follow_their_definitions():
    pe = sinusoidal_embedding(torch.arange(5), 8)
    assert torch.allclose(pe[3, 0], torch.tensor(math.sin(3.0)))
    assert torch.allclose(pe[3, 1], torch.tensor(math.cos(3.0)))
    assert torch.allclose(pe[2, 2], torch.tensor(math.sin(2 / 10000 ** (2 / 8))))
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def dot(pq: int, pk: int) -> float:
        cq, sq = rotary_cos_sin(torch.tensor([[pq]]), 16, 10000.0)
        ck, sk = rotary_cos_sin(torch.tensor([[pk]]), 16, 10000.0)
        return float((apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum())

    assert dot(7, 3) == pytest.approx(dot(104, 100), abs=1e-4)  # only the offset matters
    assert dot(7, 3) != pytest.approx(dot(7, 5), abs=1e-3)
    assert float(apply_rotary(q, *rotary_cos_sin(torch.tensor([[9]]), 16, 10000.0)).norm()) == pytest.approx(
        float(q.norm()), rel=1e-5)  # a rotation


def test_manual_attention_keeps_causal_weights():
    torch.manual_seed(0)
    model = GPT(small(attention="manual")).eval()
    model(torch.randint(0, 50, (1, 16)))
    weights = model.blocks[0].attn.weights
    assert weights.shape == (1, 4, 16, 16)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 4, 16)) and torch.all(weights.triu(1) == 0)


def test_bad_variant_settings_are_config_errors():
    from tinylm.errors import ConfigError

    for bad, fragment in (({"pos": "alibi"}, "model.pos must be one of"), ({"n_kv_head": 3}, "must divide"),
                          ({"norm": "batchnorm"}, "model.norm must be one of")):
        with pytest.raises(ConfigError, match=fragment):
            small(**bad).validate()
