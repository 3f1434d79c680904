"""`tinylm import` of Llama-family transformers directories: random LlamaForCausalLM checkpoints saved by
transformers (GQA, tied and untied, with and without biases, bf16, sharded, head_dim != hidden/heads)
import with transformers' logits; import -> export -> import is bit-identical; the imported run samples
and evaluates through the usual commands; bad directories are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_models import SAMPLE_TEXTS, byte_level_bpe, save_llama, sentencepiece  # noqa: E402
from tinylm.cli import main  # noqa: E402
from tinylm.errors import CheckpointError, ConfigError, TokenizerError  # noqa: E402
from tinylm.generation import generate_ids  # noqa: E402
from tinylm.interop.hf import export_hf, import_hf  # noqa: E402
from tinylm.run import MODEL_FILE, load, read_config, read_weights  # noqa: E402
from tinylm.tokenizers import HFTokenizer, load_tokenizer  # noqa: E402
from tinylm.tokenizers.hf import read_files  # noqa: E402

VARIANTS = {
    "gqa-untied": {},
    "tied-biases": {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True},
    "bf16-sharded-head_dim": {"dtype": "bfloat16", "max_shard_size": "60KB", "head_dim": 32},
    "attention-bias-only": {"attention_bias": True, "rope_theta": 500000.0, "num_key_value_heads": 1},
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama_tokenizers")
    return {"sentencepiece": sentencepiece(root / "spm"), "byte_level": byte_level_bpe(root / "bl")}


def llama_dir(tmp_path: Path, tokenizer_dir: Path, name: str = "src", **variant: object) -> Path:
    src = tmp_path / name
    vocab = HFTokenizer(read_files(tokenizer_dir)).vocab_size
    save_llama(src, tokenizer_dir, vocab_size=vocab, **variant)
    return src


def hf_model(path: Path) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_import_matches_transformers(tokenizers: dict[str, Path], tmp_path: Path, variant: str) -> None:
    tokenizer = "byte_level" if variant == "tied-biases" else "sentencepiece"
    src = llama_dir(tmp_path, tokenizers[tokenizer], **VARIANTS[variant])
    if "max_shard_size" in VARIANTS[variant]:
        assert (src / "model.safetensors.index.json").is_file() and len(list(src.glob("model-*.safetensors"))) > 2
    summary = import_hf(src, tmp_path / "run")
    assert summary["family"] == "llama" and summary["tokenizer"] == "hf" and summary["dtype"] == "float32"
    run = load(tmp_path / "run", device="cpu", dtype="float32")
    hf = hf_model(src)
    torch.manual_seed(0)
    idx = torch.randint(0, run.tokenizer.vocab_size, (2, 48))
    with torch.no_grad():
        ours, theirs = run.model(idx)[0], hf(idx).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()
    assert theirs.std() > 0.5  # spread logits: the comparison is not trivially small numbers
    # greedy decoding from a prompt with the BOS transformers' tokenizer adds
    auto = transformers.AutoTokenizer.from_pretrained(str(src))
    prompt = auto(SAMPLE_TEXTS[0])["input_ids"]
    assert run.tokenizer.prompt_ids(SAMPLE_TEXTS[0]) == prompt
    ids = torch.tensor([prompt])
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                           min_new_tokens=12, eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert generate_ids(run.model, prompt, max_new_tokens=12, temperature=0.0) == expected


def test_bf16_storage_and_round_trip_bit_identical(tokenizers: dict[str, Path], tmp_path: Path) -> None:
    src = llama_dir(tmp_path, tokenizers["sentencepiece"], dtype="bfloat16", attention_bias=True)
    import_hf(src, tmp_path / "kept", dtype="auto")
    tensors, meta = read_weights(tmp_path / "kept" / MODEL_FILE)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16} and meta["source_dtype"] == "bfloat16"
    import_hf(src, tmp_path / "run1")  # float32 (the default): bf16 values converted exactly
    export_hf(tmp_path / "run1", tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (src / name).read_bytes(), name  # exported unchanged
    import_hf(tmp_path / "hf", tmp_path / "run2")
    first, _ = read_weights(tmp_path / "run1" / MODEL_FILE)
    second, _ = read_weights(tmp_path / "run2" / MODEL_FILE)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, second[name]), name
        assert torch.equal(tensor, tensors[name].float()), name
    assert read_config(tmp_path / "run1").model == read_config(tmp_path / "run2").model
    assert load_tokenizer(tmp_path / "run1").fingerprint() == load_tokenizer(tmp_path / "run2").fingerprint()
    # the exported directory loads in transformers with the same logits
    idx = torch.randint(0, 700, (1, 20))
    with torch.no_grad():
        assert torch.allclose(hf_model(tmp_path / "hf")(idx).logits, hf_model(src)(idx).logits, atol=1e-5)


def test_imported_run_samples_and_evaluates(tokenizers: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    src = llama_dir(tmp_path, tokenizers["sentencepiece"])
    shutil.copytree(src, tmp_path / "moved")
    assert main(["import", str(tmp_path / "moved"), "--out", str(tmp_path / "run"), "--context", "96"]) == 0
    assert "imported" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "moved")  # the run is self-contained
    assert read_config(tmp_path / "run").model.context == 96
    assert main(["sample", str(tmp_path / "run"), "--prompt", "Hello world", "--max-new-tokens", "6",
                 "--temperature", "0", "--verbose", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    run = load(tmp_path / "run", device="cpu")
    assert f"prompt ids ({len(run.tokenizer.prompt_ids('Hello world'))}): [1, " in out  # <s> first
    text = tmp_path / "eval.txt"
    text.write_text("\n".join(SAMPLE_TEXTS * 4), encoding="utf-8")
    assert main(["eval", str(tmp_path / "run"), "--text", str(text), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tokens"] > 100 and 0 < result["loss"] < 20
    assert main(["eval", str(tmp_path / "run")]) == 1  # an imported run has no validation data of its own
    assert "--dataset NAME, --text FILE or --data" in capsys.readouterr().err


def _edit_config(src: Path, **changes: object) -> None:
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    (src / "config.json").write_text(json.dumps(config))


def test_bad_directories_are_one_line_errors(tokenizers: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    src = llama_dir(tmp_path, tokenizers["sentencepiece"], max_shard_size="60KB")
    shards = sorted(src.glob("model-*.safetensors"))
    cases = []

    def case(name: str, change, error: type, match: str) -> None:
        d = tmp_path / name
        shutil.copytree(src, d)
        change(d)
        cases.append((d, error, match))

    case("qwen", lambda d: _edit_config(d, architectures=["Qwen2ForCausalLM"], model_type="qwen2"),
         ConfigError, "'Qwen2ForCausalLM'.*not supported")
    case("rope", lambda d: _edit_config(d, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                            "rope_theta": 10000.0}), ConfigError, "'linear'")
    case("mistral", lambda d: _edit_config(d, architectures=["MistralForCausalLM"], model_type="mistral",
                                           sliding_window=32), ConfigError, "sliding_window 32")
    case("missing", lambda d: (d / shards[1].name).unlink(), CheckpointError, f"shard {shards[1].name}.*missing")
    case("corrupt", lambda d: (d / shards[0].name).write_bytes((d / shards[0].name).read_bytes()[:100]),
         CheckpointError, f"{shards[0].name} is corrupt or truncated")
    case("index", lambda d: (d / "model.safetensors.index.json").write_text("{not json"),
         CheckpointError, "index.json is corrupt")
    case("notok", lambda d: (d / "tokenizer.json").unlink(), CheckpointError, "no tokenizer.json")
    case("badtok", lambda d: (d / "tokenizer.json").write_text('{"model": 3}'), TokenizerError, "failed to load")
    capsys.readouterr()
    for d, error, match in cases:
        with pytest.raises(error, match=match):
            import_hf(d, tmp_path / f"run-{d.name}")
        assert not (tmp_path / f"run-{d.name}" / "config.json").exists()
        assert main(["import", str(d), "--out", str(tmp_path / f"cli-{d.name}")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1, err
    with pytest.raises(CheckpointError, match="is a file; give the model's folder"):
        import_hf(src / "config.json", tmp_path / "run-file")
    own = json.loads((src / "config.json").read_text())["max_position_embeddings"]
    for bad in (own + 1, 0):
        with pytest.raises(ConfigError, match=f"--context {bad}: give 1 to the model's own context, {own}"):
            import_hf(src, tmp_path / "run-long", context=bad)
    # a run whose context cannot fit a KV cache in memory: one line before the allocation
    import_hf(src, tmp_path / "run-ok")
    with pytest.raises(CheckpointError, match="is a tinylm run directory, not a transformers one"):
        import_hf(tmp_path / "run-ok", tmp_path / "run-again")
    config = json.loads((tmp_path / "run-ok" / "config.json").read_text())
    config["model"]["context"] = 10**11
    (tmp_path / "run-ok" / "config.json").write_text(json.dumps(config))
    assert main(["sample", str(tmp_path / "run-ok"), "--prompt", "Hi", "--max-new-tokens", "2", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert "the KV cache" in err and "lower model.context" in err and len(err.splitlines()) == 1, err
    # Mistral without a sliding window is a Llama
    d = tmp_path / "mistral-full"
    shutil.copytree(src, d)
    _edit_config(d, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=None)
    assert import_hf(d, tmp_path / "run-mistral")["family"] == "llama"


@pytest.mark.slow
def test_imported_run_fine_tunes_and_serves(tokenizers: dict[str, Path], tmp_path: Path) -> None:
    """An imported Llama-family run (hf tokenizer that adds <s>) goes through `tinylm finetune` (LoRA on
    chats) and `tinylm serve`: the served greedy chat reply equals `Run.chat` offline."""
    openai = pytest.importorskip("openai")
    from serving_server import running
    from tinylm.serving import create_app

    src = llama_dir(tmp_path, tokenizers["sentencepiece"])
    assert main(["import", str(src), "--out", str(tmp_path / "base"), "--context", "96"]) == 0
    chats = tmp_path / "chats.jsonl"
    with chats.open("w", encoding="utf-8") as f:
        for i in range(24):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"count to {i % 5}"},
                                             {"role": "assistant", "content": " ".join(map(str, range(i % 5 + 1)))}]})
                    + "\n")
    assert main(["finetune", str(tmp_path / "base"), "--data", str(chats), "--out", str(tmp_path / "ft"),
                 "--template", "chat", "--max-steps", "4", "--device", "cpu", "--dtype", "float32"]) == 0
    run = load(tmp_path / "ft", device="cpu", dtype="float32")
    assert run.chat_template is not None and run.chat_template.name == "chat"
    messages = [{"role": "user", "content": "count to 3"}]
    offline = run.chat(messages, temperature=0.0, max_new_tokens=8)
    app = create_app(tmp_path / "ft", model_name="ft", device="cpu", dtype="float32")
    with running(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
        reply = client.chat.completions.create(model="ft", messages=messages, temperature=0, max_tokens=8)
    assert reply.choices[0].message.content == offline
