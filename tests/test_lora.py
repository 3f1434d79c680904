"""LoRA layers on every model variant: zero update at start, merging, per-row adapters, frozen base."""

from __future__ import annotations

import copy

import pytest
import torch

from tinylm.config import LoRAConfig, ModelConfig, TrainConfig
from tinylm.errors import CheckpointError, ConfigError
from tinylm.model import GPT
from tinylm.model.lora import (LoRALinear, adapter_state, add_lora, base_state, load_adapter_state, lora_layers,
                               merge_lora, set_active)
from tinylm.training.optim import build_optimizers

ALL = "qkv,proj,fc,mlp_proj,head"
VARIANTS = {
    "gpt2": {},
    "llama-gqa": {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "bias": False},
    "untied-qknorm": {"tie_weights": False, "qk_norm": True, "pos": "sinusoidal", "norm_position": "post"},
}


def model(**fields: object) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"vocab_size": 50, "context": 24, "n_layer": 2, "n_head": 4, "d_model": 32, **fields})
    return GPT(cfg).eval()


def randomize_b(net: torch.nn.Module, name: str = "default", std: float = 0.2) -> None:
    with torch.no_grad():
        for layer in lora_layers(net).values():
            if name in layer.lora_B:
                layer.lora_B[name].normal_(0.0, std)


IDS = torch.randint(0, 50, (3, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_new_adapter_leaves_the_logits_unchanged_and_shapes_follow_the_paper(variant):
    net = model(**VARIANTS[variant])
    before = net(IDS)[0]
    names = add_lora(net, LoRAConfig(r=4, alpha=8, targets=ALL))
    set_active(net, "default")
    assert torch.equal(net(IDS)[0], before)  # B = 0
    assert len(names) == 4 * net.cfg.n_layer + 1
    qkv = net.blocks[0].attn.qkv
    assert isinstance(qkv, LoRALinear)
    assert qkv.lora_A["default"].shape == (4, 32) and qkv.lora_B["default"].shape == (qkv.out_features, 4)
    assert qkv.lora_A["default"].abs().sum() > 0 and qkv.scale["default"] == 2.0
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    if net.cfg.tie_weights:
        assert net.head.weight is net.tok_emb.weight  # the tie survives the wrapper


@pytest.mark.parametrize("variant", VARIANTS)
def test_merged_weights_give_the_logits_of_base_plus_adapter(variant):
    net = model(**VARIANTS[variant])
    add_lora(net, LoRAConfig(r=4, alpha=8, targets=ALL, dropout=0.1))
    randomize_b(net)
    set_active(net, "default")
    with torch.no_grad():
        adapted = net(IDS)[0]
        assert (adapted - net.eval()(IDS)[0]).abs().max() == 0  # eval: no LoRA dropout
        base_only = copy.deepcopy(net)
        set_active(base_only, None)
        assert (base_only(IDS)[0] - adapted).abs().max() > 1e-2  # the adapter does something
        merge_lora(net, "default")
        assert not lora_layers(net)  # plain nn.Linear again: a base run's state dict
        assert set(net.state_dict()) == set(GPT(net.cfg).state_dict())
        torch.testing.assert_close(net(IDS)[0], adapted, atol=1e-5, rtol=0)
    if VARIANTS[variant].get("tie_weights", True):
        assert net.cfg.tie_weights is False and net.head.weight is not net.tok_emb.weight


def test_per_row_adapters_give_each_row_what_it_gets_alone():
    net = model(**VARIANTS["llama-gqa"])
    add_lora(net, LoRAConfig(r=4, targets="qkv,fc"), "a")
    add_lora(net, LoRAConfig(r=2, alpha=4, targets="proj,head"), "b")
    randomize_b(net, "a")
    randomize_b(net, "b")
    rows = ["a", None, "b"]
    with torch.no_grad():
        set_active(net, rows)
        together = net(IDS)[0]
        for i, name in enumerate(rows):
            set_active(net, name)
            torch.testing.assert_close(together[i], net(IDS[i:i + 1])[0][0], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="no adapter 'c'"):
        set_active(net, ["a", "c", None])


def test_adapter_state_round_trip_and_mismatches_are_named():
    net = model()
    add_lora(net, LoRAConfig(r=4, targets="qkv,head"))
    randomize_b(net)
    state = adapter_state(net)
    assert set(state) == {f"blocks.{i}.attn.qkv.{m}" for i in range(2) for m in ("lora_A", "lora_B")} | {
        "head.lora_A", "head.lora_B"}
    other = model()
    add_lora(other, LoRAConfig(r=4, targets="qkv,head"))
    load_adapter_state(other, state)
    assert all(torch.equal(v, adapter_state(other)[k]) for k, v in state.items())
    assert set(base_state(other)) == set(model().state_dict())
    wrong = model()
    add_lora(wrong, LoRAConfig(r=2, targets="qkv,head"))
    with pytest.raises(CheckpointError, match="has shape"):
        load_adapter_state(wrong, state, origin="x.safetensors")


def test_only_adapters_get_optimizer_state_and_biases_norms_when_asked():
    net = model()
    add_lora(net, LoRAConfig(r=4, targets="qkv"))
    set_active(net, "default")
    optimizer = build_optimizers(net, TrainConfig(), torch.device("cpu"))[0]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(params) == 4 and all(p.ndim == 2 and 4 in p.shape for p in params)
    net.train()
    loss = net(IDS, IDS)[1]
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for n, p in net.named_parameters() if "lora_" not in n)
    assert len(optimizer.state) == 4
    wider = model()
    add_lora(wider, LoRAConfig(r=4, targets="qkv", train_biases=True, train_norms=True))
    trainable = {n for n, p in wider.named_parameters() if p.requires_grad}
    assert "blocks.0.attn.qkv.base.bias" in trainable and "blocks.0.ln1.weight" in trainable
    assert "blocks.0.attn.qkv.base.weight" not in trainable and "tok_emb.weight" not in trainable


def test_bad_lora_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"lora.r must be >= 1 \(the adapters' rank, --lora-r\), got 0"):
        LoRAConfig(r=0).validate()
    with pytest.raises(ConfigError, match="no layer 'gate'.*choose from qkv, proj, fc, mlp_proj, head"):
        add_lora(model(), LoRAConfig(targets="qkv,gate"))
    with pytest.raises(ConfigError, match="did you mean 'qkv'"):
        LoRAConfig(targets="qvk").validate()


def test_bfloat16_autocast_and_gradients_reach_the_adapter():
    net = model(**VARIANTS["llama-gqa"]).train()
    add_lora(net, LoRAConfig(r=4, targets=ALL))
    randomize_b(net)
    set_active(net, "default")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(IDS, IDS)[1]
    loss.backward()
    grads = [p.grad for n, p in net.named_parameters() if "lora_" in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
