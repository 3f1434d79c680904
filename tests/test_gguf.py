"""GGUF export, checked through llama.cpp itself (llama-cpp-python): for a trained GPT-2-style run with the
gpt2 tokenizer, a trained Llama-style run (RoPE, RMSNorm, SwiGLU, GQA) with a trained bpe tokenizer and an
imported Llama-family model with an hf (SentencePiece-style) tokenizer, llama.cpp tokenizes sample texts
to tinylm's ids; f32 logits on a 32-token prompt are within 1e-3 of tinylm's and greedy decoding of 32
tokens gives the same ids; f16 within 1e-2 and the same greedy ids; q8_0 loads and runs (its greedy text
is reported). Each GGUF file is built once per module. Refusals of inexpressible models need no llama.cpp."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require, tiny_config
from hf_models import SAMPLE_TEXTS, byte_level_variant, save_llama, sentencepiece, wordpiece

from tinylm.cli import main
from tinylm.config import ModelConfig, RunConfig
from tinylm.errors import ExportError
from tinylm.generation import generate_ids
from tinylm.interop.gguf import export_gguf, ollama_template
from tinylm.interop.gguf import modelfile as modelfile_text
from tinylm.interop.hf import import_hf
from tinylm.model import GPT
from tinylm.rundir import MODEL_FILE, load, read_config, save_weights, write_config
from tinylm.templates import get_template
from tinylm.tokenizers import train_tokenizer

MODELS = ("gpt2", "llama-bpe", "imported-hf")
DTYPES = ("f32", "f16", "q8_0")
PROMPT_TEXT = ("ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet is the "
               "sun. Arise, fair sun, and kill the envious moon, who is already sick and pale with grief.")


def _train(out: Path, corpus: Path, tokenizer: str, steps: int, batch: int, **model: object) -> Path:
    """Seconds of training (windows of 32 tokens; the model's context is 128, for 32 + 32 tokens)."""
    from tinylm.training import train

    cfg = tiny_config(out, corpus, max_steps=steps, eval_interval=steps, batch_size=batch, seq_len=32, lr=3e-3)
    cfg.data.tokenizer = tokenizer
    cfg.model = ModelConfig(context=128, n_layer=2, n_head=4, d_model=64, **model)
    train(cfg)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf_runs")
    tokenizer = sentencepiece(root / "spm")
    src = root / "llama-src"
    save_llama(src, tokenizer, vocab_size=train_tokenizer(f"hf:{tokenizer}", []).vocab_size, std=0.1)
    import_hf(src, root / "imported-hf")
    return {
        "gpt2": _train(root / "gpt2", corpus_file, "gpt2", 30, 4, mlp="gelu_tanh", vocab_multiple=64),
        "llama-bpe": _train(root / "llama-bpe", corpus_file, "bpe:512", 100, 8, pos="rope", norm="rmsnorm",
                            mlp="swiglu", n_kv_head=2, bias=False, tie_weights=False),
        "imported-hf": root / "imported-hf",
    }


@pytest.fixture(scope="module")
def files(runs: dict[str, Path]) -> dict[tuple[str, str], dict]:
    """Every model at every dtype, exported once: (model, dtype) -> export summary."""
    return {(name, dtype): export_gguf(run, run / "gguf" / f"{dtype}.gguf", dtype=dtype)
            for name, run in runs.items() for dtype in DTYPES}


@pytest.fixture(scope="module")
def llama_cpp():
    require("llama_cpp")
    import llama_cpp

    return llama_cpp


def _open(llama_cpp, path: str, **options: object):
    return llama_cpp.Llama(path, n_ctx=128, n_batch=128, n_threads=2, verbose=False, type_k=0, type_v=0,
                           **options)


def _greedy(llm, prompt: list[int], n: int = 32) -> list[int]:
    """llama.cpp's own greedy sampler, n tokens (end-of-text included, not stopping)."""
    out = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == n:
            return out
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_llama_cpp_tokenizes_like_tinylm(llama_cpp, runs: dict, files: dict, name: str) -> None:
    tokenizer = load(runs[name], device="cpu").tokenizer
    llm = _open(llama_cpp, files[(name, "f32")]["out"], vocab_only=True)
    try:
        for text in [*SAMPLE_TEXTS, PROMPT_TEXT, " x", "\n\n\n", "   spaces   "]:
            theirs = llm.tokenize(text.encode("utf-8"), add_bos=tokenizer.add_bos, special=False)
            assert theirs == tokenizer.prompt_ids(text), (name, text)
    finally:
        llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype,tolerance", [("f32", 1e-3), ("f16", 1e-2)])
def test_logits_and_greedy_ids_match(llama_cpp, runs: dict, files: dict, name: str, dtype: str,
                                     tolerance: float) -> None:
    run = load(runs[name], device="cpu", dtype="float32")
    prompt = run.tokenizer.prompt_ids(PROMPT_TEXT)[:32]
    assert len(prompt) == 32
    llm = _open(llama_cpp, files[(name, dtype)]["out"], logits_all=True)
    try:
        llm.eval(prompt)
        theirs = np.array(llm.scores[:32])
        with torch.no_grad():
            ours = run.model(torch.tensor([prompt]))[0][0].numpy()
        assert theirs.shape == ours.shape
        assert np.abs(ours).max() > 3  # a trained (or spread) model: the tolerance is meaningful
        assert np.abs(theirs - ours).max() <= tolerance, np.abs(theirs - ours).max()
        expected = generate_ids(run.model, prompt, max_new_tokens=32, temperature=0.0)
        assert _greedy(llm, prompt) == expected
    finally:
        llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_q8_0_runs(llama_cpp, runs: dict, files: dict, name: str, record_property,
                   capsys: pytest.CaptureFixture) -> None:
    run = load(runs[name], device="cpu")
    prompt = run.tokenizer.prompt_ids(PROMPT_TEXT)[:32]
    summaries = {dtype: files[(name, dtype)] for dtype in DTYPES}
    assert summaries["q8_0"]["bytes"] < summaries["f16"]["bytes"] < summaries["f32"]["bytes"]
    llm = _open(llama_cpp, summaries["q8_0"]["out"])
    try:
        ids = _greedy(llm, prompt)
    finally:
        llm.close()
    assert len(ids) == 32 and all(0 <= i < run.model.cfg.vocab_size for i in ids)
    text = run.tokenizer.decode(ids)
    record_property("q8_0_greedy_text", text)
    with capsys.disabled():  # reported on the terminal, not compared
        print(f"\n[gguf] {name} q8_0 greedy text: {text!r}")


@pytest.mark.slow
def test_gguf_metadata_and_tensor_types(runs: dict, files: dict) -> None:
    import gguf

    def fields(path: str) -> tuple[dict, dict]:
        reader = gguf.GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.token")
                and k != "tokenizer.ggml.merges" and k != "tokenizer.ggml.scores"}
        return meta, {t.name: t.tensor_type.name for t in reader.tensors}

    meta, types = fields(files[("gpt2", "f32")]["out"])
    assert meta["general.architecture"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.eos_token_id"] == 50256 and "position_embd.weight" in types
    meta, types = fields(files[("llama-bpe", "q8_0")]["out"])
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.pre"] == "dbrx"
    assert meta["llama.attention.head_count_kv"] == 2 and "output.weight" in types
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    meta, types = fields(files[("imported-hf", "f16")]["out"])
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and types["blk.1.ffn_gate.weight"] == "F16"
    assert abs(meta["llama.attention.layer_norm_rms_epsilon"] - 1e-6) < 1e-12


def _render_go(template: str, messages: list[dict]) -> str:
    """Execute the subset of Go text/template that `ollama_template` writes (range .Messages,
    if / else if eq .Role "...", .Content, string literals, end), to check what Ollama renders."""
    actions = [a.strip() for a in re.findall(r"\{\{(.*?)\}\}", template, re.S)]
    assert re.sub(r"\{\{.*?\}\}", "", template, flags=re.S) == "", "text outside actions"

    def parse(i: int) -> tuple[list, int, str]:
        nodes: list = []
        while i < len(actions):
            a, i = actions[i], i + 1
            if a == "range .Messages":
                body, i, _ = parse(i)
                nodes.append(("range", body))
            elif a.startswith("if "):
                branches, cond = [], a[3:]
                while True:
                    body, i, end = parse(i)
                    branches.append((json.loads(cond.split()[-1]), body))
                    if not end.startswith("else if "):
                        break
                    cond = end[len("else if "):]
                nodes.append(("if", branches))
            elif a.startswith("else if ") or a == "end":
                return nodes, i, a
            else:
                nodes.append(("print", a))
        return nodes, i, ""

    def run(nodes: list, message: dict | None) -> str:
        out = ""
        for kind, value in nodes:
            if kind == "range":
                out += "".join(run(value, m) for m in messages)
            elif kind == "if":
                out += next((run(body, message) for role, body in value if message["role"] == role), "")
            else:
                out += message["content"] if value == ".Content" else json.loads(value)
        return out

    return run(parse(0)[0], None)


def test_chat_template_and_modelfile(runs: dict, tmp_path: Path, llama_cpp) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = get_template("chat")
    summary = export_gguf(runs["llama-bpe"], tmp_path / "chat.gguf", dtype="q8_0", chat_template="chat")
    assert summary["chat_template"]
    llm = _open(llama_cpp, summary["out"], vocab_only=True)
    try:
        jinja = llm.metadata["tokenizer.chat_template"]
    finally:
        llm.close()
    assert jinja == template.jinja()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}]
    eot = "<|endoftext|>"
    expected = template.text(messages, eot, add_generation_prompt=True)
    rendered = Jinja2ChatFormatter(jinja, eos_token=eot, bos_token=eot)(messages=messages).prompt
    assert rendered == expected  # what llama-cpp-python's chat completion renders
    modelfile = (tmp_path / "chat.Modelfile").read_text()
    assert "FROM ./chat.gguf\n" in modelfile
    assert 'PARAMETER stop "<|endoftext|>"' in modelfile and 'PARAMETER stop "<|user|>"' in modelfile
    go = re.search(r'TEMPLATE """(.*)"""', modelfile, re.S).group(1)
    assert go == ollama_template(template, eot)
    assert _render_go(go, messages) == expected
    # alpaca has a default system message: the Modelfile's SYSTEM, which Ollama puts first in .Messages
    alpaca = get_template("alpaca")
    assert f'SYSTEM """{alpaca.default_system}"""' in modelfile_text("m.gguf", alpaca, None, [eot])
    with_system = [{"role": "system", "content": alpaca.default_system}, *messages[1:]]
    assert _render_go(ollama_template(alpaca, eot), with_system) == alpaca.text(messages[1:], eot, True)


def _random_run(tmp_path: Path, tokenizer, name: str, **model: object) -> Path:
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, context=32, n_layer=1, n_head=2, d_model=16, **model)
    run_dir = tmp_path / name
    run_dir.mkdir()
    tokenizer.save(run_dir)
    run_cfg = RunConfig(preset="test")
    run_cfg.model = cfg
    write_config(run_dir, run_cfg)
    save_weights(GPT(cfg), run_dir / MODEL_FILE, {"step": 0, "tokenizer_fingerprint": tokenizer.fingerprint()})
    return run_dir


@pytest.mark.parametrize("style,pre", [("llama3", "llama-bpe"), ("smollm", "smollm")])
def test_hf_byte_level_pre_tokenizers_in_llama_cpp(llama_cpp, tmp_path: Path, style: str, pre: str) -> None:
    """Byte-level hf tokenizers map to the llama.cpp pre-tokenizer that splits their text the same way."""
    tokenizer = train_tokenizer(f"hf:{byte_level_variant(tmp_path / style, style)}", [])
    assert tokenizer.add_bos == (style == "llama3")
    summary = export_gguf(_random_run(tmp_path, tokenizer, "run", pos="rope", norm="rmsnorm", mlp="swiglu"),
                          tmp_path / "m.gguf")
    assert summary["pre_tokenizer"] == pre
    llm = _open(llama_cpp, summary["out"], vocab_only=True)
    try:
        for text in [*SAMPLE_TEXTS, PROMPT_TEXT, "12345678 3.14159", "don't WON'T"]:
            theirs = llm.tokenize(text.encode("utf-8"), add_bos=tokenizer.add_bos, special=False)
            assert theirs == tokenizer.prompt_ids(text), (style, text)
    finally:
        llm.close()


def test_inexpressible_exports_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for spec in ("char", "word:100"):
        run = _random_run(tmp_path, train_tokenizer(spec, SAMPLE_TEXTS), spec[:4], mlp="gelu_tanh")
        with pytest.raises(ExportError, match=f"data.tokenizer = '{spec[:4]}'"):
            export_gguf(run, tmp_path / "x.gguf")
    bpe = train_tokenizer("bpe:300", [" ".join(SAMPLE_TEXTS) * 3])
    cases = {"model.pos = 'sinusoidal'": {"pos": "sinusoidal"}, "model.qk_norm": {"qk_norm": True},
             "model.norm_position = 'post'": {"norm_position": "post"}}
    for needle, model in cases.items():
        with pytest.raises(ExportError, match=re.escape(needle)):
            export_gguf(_random_run(tmp_path, bpe, needle.split()[0] + str(len(model)), **model), tmp_path / "x.gguf")
    bert = train_tokenizer(f"hf:{wordpiece(tmp_path / 'wp')}", [])
    run = _random_run(tmp_path, bert, "bert", mlp="gelu_tanh")
    with pytest.raises(ExportError, match="model.type 'WordPiece'"):
        export_gguf(run, tmp_path / "x.gguf")
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "WordPiece" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists()


def test_cli_export_gguf(runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli" / "model.gguf"
    assert main(["export", str(runs["llama-bpe"]), "--format", "gguf", "--out", str(out), "--dtype", "q8_0"]) == 0
    printed = capsys.readouterr().out
    assert "llama" in printed and "q8_0" in printed and out.is_file() and out.with_suffix(".Modelfile").is_file()
    other = out.with_name("model-f16.gguf")  # a second export beside it keeps the first one's Modelfile
    assert main(["export", str(runs["llama-bpe"]), "--format", "gguf", "--out", str(other), "--dtype", "f16"]) == 0
    assert "FROM ./model.gguf" in out.with_suffix(".Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in other.with_suffix(".Modelfile").read_text()
    capsys.readouterr()
    before = out.read_bytes()
    run_file = runs["llama-bpe"] / "config.json"
    for target, flags, fragment in ((out, [], "exists; give a new path, or pass --overwrite"),
                                    (run_file, ["--overwrite"], "is a tinylm run directory"),
                                    (out.parent, [], "is a folder; give the GGUF file's path")):
        assert main(["export", str(runs["llama-bpe"]), "--format", "gguf", "--out", str(target), *flags]) == 1
        err = capsys.readouterr().err.strip()
        assert fragment in err and len(err.splitlines()) == 1, err
    assert out.read_bytes() == before and read_config(runs["llama-bpe"]).model.pos == "rope"  # nothing replaced
    assert main(["export", str(runs["llama-bpe"]), "--format", "gguf", "--out", str(out), "--overwrite"]) == 0
