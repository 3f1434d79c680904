"""Hugging Face interop: export to transformers GPT-2, import GPT-2 directories, refuse unsafe pickles."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tinylm.config import ModelConfig, RunConfig  # noqa: E402
from tinylm.errors import CheckpointError, ConfigError, ExportError  # noqa: E402
from tinylm.generation import generate_ids  # noqa: E402
from tinylm.interop.gpt2 import check_gpt2_compatible, from_gpt2_state, gpt2_config, to_gpt2_state  # noqa: E402
from tinylm.interop.hf import export_hf, import_hf  # noqa: E402
from tinylm.model import GPT  # noqa: E402
from tinylm.run import MODEL_FILE, load, read_weights, save_weights, write_config  # noqa: E402
from tinylm.tokenizers.char import CharTokenizer  # noqa: E402

CHARS = "".join(chr(c) for c in range(32, 127))  # 95 chars + <unk> = 96 ids


def hf_model(path: Path) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def random_run(tmp_path: Path, name: str = "run", std: float = 0.3, **model: object) -> Path:
    """A run directory holding a randomly initialised model (weights scaled up so that greedy
    decoding has clear winners) with a 96-id char tokenizer."""
    fields = dict(vocab_size=96, context=128, n_layer=2, n_head=4, d_model=32)
    fields.update(model)
    cfg = ModelConfig(**fields)
    torch.manual_seed(0)
    net = GPT(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, std)
    run_dir = tmp_path / name
    run_dir.mkdir()
    tokenizer = CharTokenizer(list(CHARS))
    tokenizer.save(run_dir)
    run_cfg = RunConfig(preset="test")
    run_cfg.model = cfg
    write_config(run_dir, run_cfg)
    save_weights(net, run_dir / MODEL_FILE, {"step": 0, "tokenizer_fingerprint": tokenizer.fingerprint()})
    return run_dir


def tiny_gpt2(vocab_size: int = 50257, **kw: object) -> torch.nn.Module:
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial layer norms and biases, too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def assert_logits_match(run_dir: Path, hf: torch.nn.Module, vocab: int, context: int, atol: float = 1e-4) -> None:
    run = load(run_dir, device="cpu", dtype="float32")
    torch.manual_seed(2)
    idx = torch.randint(0, vocab, (3, context))
    with torch.no_grad():
        ours, _ = run.model(idx)
        theirs = hf(idx).logits
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=atol, rtol=0), (ours - theirs).abs().max()


def greedy_both(run_dir: Path, hf: torch.nn.Module, prompt: list[int], n: int) -> tuple[list[int], list[int]]:
    run = load(run_dir, device="cpu", dtype="float32")
    ours = generate_ids(run.model, prompt, max_new_tokens=n, temperature=0.0, use_cache=True,
                        suppress_ids=run.tokenizer.suppressed_ids)  # as `tinylm sample` (and the export's config)
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                      min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return list(ours), out[0, len(prompt):].tolist()


# --------------------------------------------------------------------------- export


def test_export_trained_run_matches_transformers(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    summary = export_hf(trained_run, out)
    assert summary["family"] == "gpt2"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (out / "generation_config.json").is_file()
    run = load(trained_run, device="cpu", dtype="float32")
    hf = hf_model(out)
    assert_logits_match(trained_run, hf, run.model.cfg.vocab_size, run.model.cfg.context)
    ours, theirs = greedy_both(trained_run, hf, run.tokenizer.encode("HAMLE"), 20)
    assert ours == theirs and len(ours) == 20


def test_export_of_a_word_run_starts_at_its_bos_and_suppresses_what_tinylm_never_generates(
        tmp_path: Path, corpus_file: Path) -> None:
    """A word tokenizer's generation starts from <sos> (not <eos>), and <pad>/<unk>/<sos> are never
    generated: the exported config and generation_config say so, so transformers' greedy ids are tinylm's."""
    from conftest import tiny_config
    from tinylm.training import train

    cfg = tiny_config(tmp_path / "word", corpus_file, max_steps=30, eval_interval=30)
    cfg.data.tokenizer = "word:300"
    train(cfg)
    run = load(tmp_path / "word", device="cpu", dtype="float32")
    export_hf(tmp_path / "word", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert config["bos_token_id"] == generation["bos_token_id"] == run.tokenizer.bos_id == run.tokenizer.start_ids()[0]
    assert generation["suppress_tokens"] == sorted(run.tokenizer.suppressed_ids) == [0, 1, 2]
    ours, theirs = greedy_both(tmp_path / "word", hf_model(tmp_path / "hf"), run.tokenizer.encode("the king"), 20)
    assert ours == theirs and not set(ours) & {0, 1, 2}


def test_export_never_mixes_into_a_run_or_another_export(trained_run: Path, tmp_path: Path, capsys) -> None:
    """An export goes to a new or empty folder; an earlier export is replaced only with --overwrite; a
    run directory never (its config.json and weights would be lost)."""
    from tinylm.cli import main

    run_copy = tmp_path / "run"
    shutil.copytree(trained_run, run_copy)
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    for extra in ([], ["--overwrite"]):
        assert main(["export", str(trained_run), "--out", str(run_copy), *extra]) == 1
        assert "is a tinylm run directory" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before
    out = tmp_path / "hf"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    assert main(["export", str(trained_run), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(trained_run), "--out", str(out), "--overwrite"]) == 0
    assert hf_model(out) is not None


@pytest.mark.parametrize("variant", [{}, {"bias": False}, {"mlp": "gelu_tanh"}, {"tie_weights": False}])
def test_export_variants_match_transformers(tmp_path: Path, variant: dict) -> None:
    run_dir = random_run(tmp_path, **variant)
    out = tmp_path / "hf"
    export_hf(run_dir, out)
    hf = hf_model(out)
    assert_logits_match(run_dir, hf, 96, 128)
    ours, theirs = greedy_both(run_dir, hf, [5, 17, 40, 3, 77], 50)
    assert ours == theirs and len(ours) == 50
    names = set(read_weights(out / "model.safetensors")[0])
    assert ("lm_head.weight" in names) == (variant.get("tie_weights") is False)


def test_export_bias_free_writes_zero_biases(tmp_path: Path) -> None:
    cfg = ModelConfig(vocab_size=40, context=16, n_layer=1, n_head=2, d_model=16, bias=False)
    state = to_gpt2_state(GPT(cfg))
    assert torch.count_nonzero(state["transformer.h.0.attn.c_attn.bias"]) == 0
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (16, 48)  # Conv1D: (in, out)
    assert gpt2_config(cfg)["n_inner"] == 64


@pytest.mark.parametrize("field, value, needle", [
    ("pos", "sinusoidal", "model.pos"), ("norm", "rmsnorm", "model.norm"), ("norm_position", "post", "norm_position"),
    ("mlp", "swiglu", "model.mlp"), ("n_kv_head", 1, "n_kv_head"), ("qk_norm", True, "qk_norm")])
def test_gpt2_incompatible_fields_named(field: str, value: object, needle: str) -> None:
    cfg = ModelConfig(vocab_size=40, context=16, n_layer=1, n_head=2, d_model=16, **{field: value})
    with pytest.raises(ExportError, match=needle):
        check_gpt2_compatible(cfg)


def test_export_sinusoidal_refused(tmp_path: Path) -> None:
    run_dir = random_run(tmp_path, pos="sinusoidal")
    with pytest.raises(ExportError, match="sinusoidal") as e:
        export_hf(run_dir, tmp_path / "hf")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "hf" / "model.safetensors").exists()


# --------------------------------------------------------------------------- import


def test_import_safetensors_and_bin_match_transformers(tmp_path: Path) -> None:
    hf = tiny_gpt2()
    st_dir, bin_dir = tmp_path / "st", tmp_path / "bin"
    hf.save_pretrained(st_dir, safe_serialization=True)
    hf.config.save_pretrained(bin_dir)
    torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
    for src in (st_dir, bin_dir):
        run_dir = tmp_path / f"run-{src.name}"
        import_hf(src, run_dir)
        run = load(run_dir, device="cpu", dtype="float32")
        assert run.tokenizer.kind == "gpt2" and run.config.preset == "imported"
        assert run.config.data.tokenizer == "gpt2"
        assert_logits_match(run_dir, hf, 50257, 64)
        assert isinstance(run.generate("Hello", max_new_tokens=3, seed=0), str)


def test_import_gelu_untied_and_round_trip(tmp_path: Path) -> None:
    hf = tiny_gpt2(activation_function="gelu", tie_word_embeddings=False)
    hf.save_pretrained(tmp_path / "src", safe_serialization=True)
    import_hf(tmp_path / "src", tmp_path / "run1")
    cfg = load(tmp_path / "run1").config.model
    assert cfg.mlp == "gelu" and not cfg.tie_weights
    assert_logits_match(tmp_path / "run1", hf, 50257, 64)
    export_hf(tmp_path / "run1", tmp_path / "hf2")
    import_hf(tmp_path / "hf2", tmp_path / "run2")
    first, second = read_weights(tmp_path / "run1" / MODEL_FILE)[0], read_weights(tmp_path / "run2" / MODEL_FILE)[0]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_export_import_round_trip_keeps_char_run(trained_run: Path, tmp_path: Path) -> None:
    export_hf(trained_run, tmp_path / "hf", checkpoint="latest")
    import_hf(tmp_path / "hf", tmp_path / "back")
    original, back = load(trained_run, checkpoint="latest"), load(tmp_path / "back")
    assert back.tokenizer.fingerprint() == original.tokenizer.fingerprint()
    a, b = original.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert original.generate("HAM", max_new_tokens=10, temperature=0) == back.generate("HAM", max_new_tokens=10,
                                                                                        temperature=0)


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_malicious_bin_refused_without_running_code(tmp_path: Path) -> None:
    src = tmp_path / "evil"
    tiny_gpt2().config.save_pretrained(src)
    marker = tmp_path / "pwned"
    torch.save({"transformer.wte.weight": torch.zeros(2, 2), "x": _Evil(str(marker))}, src / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused") as e:
        import_hf(src, tmp_path / "run")
    assert "\n" not in str(e.value)
    assert not marker.exists()
    assert not (tmp_path / "run" / "config.json").exists()


def test_import_unsupported_config_names_model_type(tmp_path: Path) -> None:
    src = tmp_path / "qwen"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 100}))
    with pytest.raises(ConfigError, match="model_type 'qwen2'"):
        import_hf(src, tmp_path / "run")


def test_import_missing_weights(tmp_path: Path) -> None:
    src = tmp_path / "src"
    tiny_gpt2().config.save_pretrained(src)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        import_hf(src, tmp_path / "run")


def test_import_vocab_size_mismatch_names_both(tmp_path: Path) -> None:
    hf = tiny_gpt2()
    src = tmp_path / "src"
    hf.save_pretrained(src, safe_serialization=True)
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] = 50304
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="50304.*50257"):
        import_hf(src, tmp_path / "run")


def test_from_gpt2_state_missing_tensor() -> None:
    cfg = ModelConfig(vocab_size=40, context=16, n_layer=1, n_head=2, d_model=16)
    state = to_gpt2_state(GPT(cfg))
    del state["transformer.h.0.mlp.c_fc.weight"]
    with pytest.raises(KeyError):
        from_gpt2_state(state, cfg)


def test_cli_export_and_import(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tinylm.cli import main

    assert main(["export", str(trained_run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "gpt2" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert "imported" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "nothing"), "--out", str(tmp_path / "run2")]) == 1
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 1  # no overwriting
    assert "already a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("variant", [{}, {"tie_weights": False, "bias": True}])
def test_export_llama_family_run_loads_with_auto_classes(tmp_path: Path, variant: dict) -> None:
    """RoPE + RMSNorm + SwiGLU (grouped-query) exports as LlamaForCausalLM: the directory loads
    with AutoModelForCausalLM and AutoTokenizer alone, logits and greedy tokens match."""
    fields = {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "bias": False, **variant}
    run_dir = random_run(tmp_path, std=0.2, **fields)
    out = tmp_path / "hf"
    assert export_hf(run_dir, out)["family"] == "llama"
    hf = hf_model(out)
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert_logits_match(run_dir, hf, 96, 128)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "To be, or not to be: that is the question."
    ids = load(run_dir, device="cpu", dtype="float32").tokenizer.encode(text)
    assert tokenizer(text)["input_ids"] == ids
    ours, theirs = greedy_both(run_dir, hf, ids[:8], 50)
    assert ours == theirs and len(ours) == 50
