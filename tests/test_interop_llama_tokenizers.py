"""Llama export (config + weights) and Hugging Face tokenizer export, checked against transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tinylm.config import ModelConfig  # noqa: E402
from tinylm.generation import generate_ids  # noqa: E402
from tinylm.interop.hf_tokenizer import export_tokenizer  # noqa: E402
from tinylm.interop.llama import from_llama_state, llama_compatible, llama_config, to_llama_state  # noqa: E402
from tinylm.model.gpt import GPT  # noqa: E402
from tinylm.tokenizers import train_tokenizer  # noqa: E402

SAMPLE = ("<|endoftext|>HAMLET:\nTo be, or not to be -- that's the question!  Café naïve résumé 3.14 1,000 don't\n\n"
          "  (king's) “quoted” ‘x’ —dash_ under 日本 é ☃ <unk> end.\t tab\r\nlast line ")


def llama_cfg(**overrides: object) -> ModelConfig:
    options = dict(vocab_size=101, context=96, n_layer=2, n_head=4, n_kv_head=2, d_model=64, mlp="swiglu",
                   pos="rope", norm="rmsnorm", bias=False, rope_base=5000.0)
    options.update(overrides)
    cfg = ModelConfig(**options)
    cfg.validate()
    return cfg


def hf_llama(model: GPT) -> torch.nn.Module:
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama_config(model.cfg))).eval()
    result = hf.load_state_dict(to_llama_state(model), strict=not model.cfg.tie_weights)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= {"lm_head.weight"}
    return hf


def test_llama_compatible() -> None:
    assert llama_compatible(llama_cfg())
    assert llama_compatible(llama_cfg(bias=True))
    for bad in (dict(pos="learned"), dict(norm="layernorm"), dict(mlp="gelu"), dict(qk_norm=True),
                dict(norm_position="post")):
        assert not llama_compatible(llama_cfg(**bad))
    with pytest.raises(ValueError, match="not Llama-compatible"):
        llama_config(llama_cfg(mlp="gelu"))


def test_llama_config_rope_base_reaches_transformers() -> None:
    cfg = llama_cfg()
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama_config(cfg)))
    expected = cfg.rope_base ** (-torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    torch.testing.assert_close(hf.model.rotary_emb.inv_freq.float(), expected)
    assert hf.config.num_key_value_heads == 2 and hf.config.intermediate_size == cfg.ff_width


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_llama_logits_and_greedy_generation_match(tie: bool, bias: bool) -> None:
    cfg = llama_cfg(tie_weights=tie, bias=bias)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    if bias:  # nonzero biases, so a misplaced one shows
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.02)
    hf = hf_llama(model)
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    x = torch.randint(0, cfg.vocab_size, (3, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-4, rtol=0)

    prompt = x[0, :20].tolist()
    ours = generate_ids(model, prompt, 50, temperature=0.0, device=torch.device("cpu"))
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=50, min_new_tokens=50, do_sample=False, pad_token_id=0)
    assert out[0, len(prompt):].tolist() == ours
    assert len(ours) == 50


def test_from_llama_state_round_trip() -> None:
    cfg = llama_cfg(tie_weights=False, bias=True)
    model = GPT(cfg)
    restored = GPT(cfg)
    restored.load_state_dict(from_llama_state(cfg, to_llama_state(model)))
    restored_state = restored.state_dict()
    for name, a in model.state_dict().items():
        assert torch.equal(a, restored_state[name]), name


@pytest.mark.parametrize("spec", ["char", "word:5000", "word:400:lower", "gpt2", "bpe:300"])
def test_tokenizer_export_loads_in_auto_tokenizer(spec: str, corpus_text: str, tmp_path: Path) -> None:
    tok = train_tokenizer(spec, [corpus_text[:20_000]])
    export_tokenizer(tok, tmp_path, model_max_length=96)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).is_file()
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(auto, transformers.PreTrainedTokenizerFast)
    assert auto.model_max_length == 96
    texts = [SAMPLE, corpus_text[20_000:23_000], "", "\n\n", "a"]
    for text in texts:
        ids = tok.encode(text)
        assert auto.encode(text, add_special_tokens=False) == ids, text[:50]
        if not spec.startswith("word"):  # word decoding differs in spacing
            assert auto.decode(ids) == tok.decode(ids)
    assert auto.vocab_size == tok.vocab_size or len(auto) == tok.vocab_size
    if spec == "char":
        assert tok.unk_id in tok.encode(SAMPLE)  # the sample has characters outside the vocabulary
        assert auto.unk_token_id == tok.unk_id
    if spec.startswith("word"):
        assert auto.unk_token_id == tok.unk_id and auto.eos_token_id == tok.eot_id
    if spec in ("gpt2", "bpe:300"):
        assert auto.eos_token_id == tok.eot_id
    if spec == "gpt2":
        assert auto.encode("<|endoftext|>", add_special_tokens=False) == tok.encode("<|endoftext|>")
