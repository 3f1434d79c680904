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
from tinylm.chat.templates import get_template
from tinylm.cli import main
from tinylm.config import ModelConfig, RunConfig
from tinylm.errors import ExportError
from tinylm.generation import generate_ids
from tinylm.interop.gguf import export_gguf, ollama_template
from tinylm.interop.gguf import modelfile as modelfile_text
from tinylm.interop.hf import import_hf
from tinylm.model import GPT
from tinylm.run import MODEL_FILE, load, read_config, save_weights, write_config
from tinylm.runtime import cpu_has_amx
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
    """llama.cpp runs in child processes (tinylm.interop.llama_cpp): a crash inside it fails the test
    that caused it, with the signal and the likely cause, and the rest of the suite goes on."""
    require("llama_cpp")
    from tinylm.interop import llama_cpp

    return llama_cpp


def _open(llama_cpp, path: str, **options: object):
    """`path` in llama.cpp: weight repacking on, unless a probe decode shows it crashes here (AMX)."""
    return llama_cpp.open_llama_cpp(path, n_ctx=128, n_batch=128, n_threads=2, type_k=0, type_v=0, **options)


def _greedy(llm, prompt: list[int], n: int = 32) -> list[int]:
    """llama.cpp's own greedy sampler, n tokens (end-of-text included, not stopping)."""
    return llm.greedy(prompt, n)["ids"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_llama_cpp_tokenizes_like_tinylm(llama_cpp, runs: dict, files: dict, name: str) -> None:
    tokenizer = load(runs[name], device="cpu").tokenizer
    llm = _open(llama_cpp, files[(name, "f32")]["out"], vocab_only=True)
    try:
        for text in [*SAMPLE_TEXTS, PROMPT_TEXT, " x", "\n\n\n", "   spaces   "]:
            theirs = llm.tokenize(text, add_bos=tokenizer.add_bos, special=False)
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
        theirs = llm.logits(prompt)
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
    if not cpu_has_amx():  # the default path (weights repacked for this CPU) is what runs here
        assert llm.repack and llm.repack_crash is None, llm.repack_crash
    how = "llama.cpp defaults" if llm.repack else f"repack off; the defaults crashed: {llm.repack_crash}"
    text = run.tokenizer.decode(ids)
    record_property("q8_0_greedy_text", text)
    record_property("q8_0_llama_cpp_path", how)
    with capsys.disabled():  # reported on the terminal, not compared
        print(f"\n[gguf] {name} q8_0 greedy text ({how[:200]}): {text!r}")


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
    actions = [a.strip() for a in re.findall(r"\{\{(.*?)\}\}", template, re.DOTALL)]
    assert re.sub(r"\{\{.*?\}\}", "", template, flags=re.DOTALL) == "", "text outside actions"

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
        jinja = llm.metadata()["tokenizer.chat_template"]
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
    go = re.search(r'TEMPLATE """(.*)"""', modelfile, re.DOTALL).group(1)
    assert go == ollama_template(template, eot)
    assert _render_go(go, messages) == expected
    # alpaca has a default system message: the Modelfile's SYSTEM, which Ollama puts first in .Messages
    alpaca = get_template("alpaca")
    assert f'SYSTEM """{alpaca.default_system}"""' in modelfile_text("m.gguf", alpaca, None, [eot])
    with_system = [{"role": "system", "content": alpaca.default_system}, *messages[1:]]
    assert _render_go(ollama_template(alpaca, eot), with_system) == alpaca.text(messages[1:], eot, True)


def _random_run(tmp_path: Path, tokenizer, name: str, **model: object) -> Path:
    cfg = ModelConfig(**{"vocab_size": tokenizer.vocab_size, "context": 32, "n_layer": 1, "n_head": 2,
                         "d_model": 16, **model})
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
            theirs = llm.tokenize(text, add_bos=tokenizer.add_bos, special=False)
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


@pytest.mark.slow
def test_weight_repacking_off_loads_without_extra_buffer_types_and_decodes_the_same(llama_cpp, runs: dict,
                                                                                    files: dict) -> None:
    """`repack=False` (use_extra_bufts = False, llama-cli's --no-repack) really keeps llama.cpp from
    considering the repacking buffer types (CPU_REPACK, AMX), and greedy decoding is unchanged."""
    path = files[("llama-bpe", "q8_0")]["out"]
    prompt = load(runs["llama-bpe"], device="cpu").tokenizer.prompt_ids(PROMPT_TEXT)[:32]
    with _open(llama_cpp, path, verbose=True) as default:  # repacking on, unless it crashes here (AMX)
        expected, default_log = _greedy(default, prompt), default.log()
    with llama_cpp.LlamaCpp(path, repack=False, verbose=True, n_ctx=128, n_threads=2, type_k=0, type_v=0) as llm:
        ids, log = _greedy(llm, prompt), llm.log()
    assert ids == expected and len(ids) == 32
    assert "load_tensors" in log  # the verbose load log was captured
    assert not re.search(r"CPU_REPACK|\bAMX\b.*buffer", log), log[-2000:]
    if default.repack and "REPACK = 1" in default_log:  # a build with repacking: the defaults consider it
        assert re.search(r"CPU_REPACK|\bAMX\b", default_log), default_log[-2000:]


@pytest.mark.slow
def test_a_crash_with_repacking_is_detected_in_a_child_and_repacking_turned_off(llama_cpp, runs: dict,
                                                                               files: dict) -> None:
    """On a llama.cpp that segfaults decoding repacked weights (builds for AMX CPUs, ggml-org/llama.cpp
    #20824; here a child class that crashes as they do), the probe's child dies, this process goes on,
    and the file is reopened with repacking off, which decodes what llama.cpp's defaults decode here."""
    path = files[("llama-bpe", "q8_0")]["out"]
    prompt = load(runs["llama-bpe"], device="cpu").tokenizer.prompt_ids(PROMPT_TEXT)[:32]
    with _open(llama_cpp, path) as default:
        expected = _greedy(default, prompt)
    amx = llama_cpp.open_llama_cpp(path, model="native_crashers:AMXLikeLlama", pythonpath=[str(Path(__file__).parent)],
                                   n_ctx=128, n_batch=128, n_threads=2, type_k=0, type_v=0)
    try:
        assert not amx.repack and amx.label == " (repack off)"
        crash = amx.repack_crash
        assert "died with SIGSEGV (signal 11)" in crash and "llama.cpp/issues/20824" in crash and "--no-repack" in crash
        assert _greedy(amx, prompt) == expected
    finally:
        amx.close()


def test_quantized_export_on_an_amx_cpu_prints_the_llama_cpp_hint_once(runs: dict, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tinylm.interop import gguf as gguf_export

    for amx, dtype, expected in ((True, "q8_0", 1), (True, "f16", 0), (False, "q8_0", 0)):
        monkeypatch.setattr(gguf_export, "cpu_has_amx", lambda amx=amx: amx)  # the CPU this runs on, as told
        out = tmp_path / f"{amx}-{dtype}.gguf"
        assert main(["export", str(runs["llama-bpe"]), "--format", "gguf", "--out", str(out), "--dtype", dtype]) == 0
        captured = capsys.readouterr()
        err = captured.err
        hints = [line for line in err.splitlines() if "AMX" in line]
        assert len(hints) == expected, err
        command = next(line for line in captured.out.splitlines() if "llama-cli" in line)
        assert command.endswith(f"llama-cli -m {out}" + (" --no-repack" if expected else "")), command
        if expected:
            assert hints[0].startswith("warning:") and "--no-repack" in hints[0] and "use_extra_bufts" in hints[0]
            assert "llama.cpp/issues/20824" in hints[0] and out.is_file()


@pytest.mark.slow
def test_bench_decode_survives_a_llama_cpp_crash_and_labels_the_repack_off_row(llama_cpp) -> None:
    """bench/decode.py on a llama.cpp that crashes as AMX builds do (quantized files, repacking on):
    the benchmark finishes, the crash is a row that says so, and q8_0 is measured with repacking off."""
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench" / "decode.py"
    result = subprocess.run([sys.executable, str(bench), "--quick", "--no-compile", "--sizes", "tinystories-gpt2",
                             "--llama-model", "native_crashers:AMXLikeLlama"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by_engine = {r["engine"]: r for r in rows if r.get("bench") == "decode"}
    assert by_engine["llama.cpp q8_0 (repack off)"]["tokens_per_s"] > 0
    assert by_engine["llama.cpp f32"]["tokens_per_s"] > 0  # f32 is not repacked: its row is the default one
    crash = by_engine["llama.cpp q8_0 (llama.cpp defaults)"]["skipped"]
    assert crash.startswith("crashed:") and "SIGSEGV" in crash and "20824" in crash
    assert "| llama.cpp q8_0 (repack off) |" in result.stdout  # in the Markdown table too


# --------------------------------------------------------------------------- failures, on tiny random files

TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A random 1-layer GPT-2-style model (width 32) with a small BPE tokenizer, as f32 and q8_0 GGUF."""
    tmp = tmp_path_factory.mktemp("tiny_gguf")
    bpe = train_tokenizer("bpe:300", [" ".join(SAMPLE_TEXTS) * 3])
    run = _random_run(tmp, bpe, "run", d_model=32, mlp="gelu_tanh")
    return {dtype: export_gguf(run, tmp / f"{dtype}.gguf", dtype=dtype)["out"] for dtype in ("f32", "q8_0")}


def _open_as(llama_cpp, path: str, model: str, **options: object):
    return llama_cpp.open_llama_cpp(path, model=f"native_crashers:{model}", pythonpath=[TESTS], n_ctx=32,
                                    n_threads=1, **options)


def test_a_crash_with_repacking_off_too_is_raised_and_not_blamed_on_amx(llama_cpp, tiny_gguf: dict) -> None:
    """A llama.cpp that crashes whatever the repacking (any bug): open_llama_cpp probes the fallback as
    well and raises, naming the crash with repacking off and not the AMX repacking bug."""
    for dtype in ("f32", "q8_0"):
        with pytest.raises(llama_cpp.NativeCrash) as info:
            _open_as(llama_cpp, tiny_gguf[dtype], "CrashAlways")
        message = str(info.value)
        assert "(repack off)" in message and "died with SIGSEGV (signal 11) during greedy()" in message, message
        assert "turning weight repacking off does not avoid this crash" in message
        assert llama_cpp.AMX_REPACK_NOTE not in message and "20824" not in message, message
        assert info.value.signal_name == "SIGSEGV" and "\n" not in message


def test_only_crashes_of_quantized_files_with_repacking_on_name_the_amx_bug(llama_cpp, tiny_gguf: dict) -> None:
    for dtype, repack, note in (("q8_0", True, "AMX_REPACK_NOTE"), ("f32", True, "NATIVE_NOTE"),
                                ("q8_0", False, "REPACK_OFF_NOTE")):
        with llama_cpp.LlamaCpp(tiny_gguf[dtype], repack=repack, model="native_crashers:CrashAlways",
                                pythonpath=[TESTS], n_ctx=32) as llm:
            assert llm.quantized == (dtype == "q8_0")
            with pytest.raises(llama_cpp.NativeCrash) as info:
                llm.greedy([1, 2, 3], 2)
        assert f"likely cause: {getattr(llama_cpp, note)}" in str(info.value), (dtype, repack, str(info.value))


def test_a_probe_that_times_out_is_raised_not_taken_for_the_repacking_crash(llama_cpp, tiny_gguf: dict) -> None:
    with pytest.raises(llama_cpp.NativeCrash, match="stopped answering for 1 s and was killed during greedy") as info:
        _open_as(llama_cpp, tiny_gguf["q8_0"], "SlowProbe", timeout=1.0)
    assert info.value.signal_name is None and "(repack off)" not in str(info.value)


def test_failed_opens_leave_no_child_process_and_bad_files_say_why(llama_cpp, tiny_gguf: dict,
                                                                   tmp_path: Path) -> None:
    """A Python error in the probe, a load that fails and a path that is no GGUF file: one-line errors
    that say what is wrong, and no child process left, even while the errors are kept."""
    from native_crashers import live_children
    from tinylm.errors import DataError
    from tinylm.interop.native import ChildError

    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    data = Path(tiny_gguf["f32"]).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    before, errors = set(live_children()), []
    cases = [(lambda: _open_as(llama_cpp, tiny_gguf["q8_0"], "RaisingProbe"), ChildError,
              "RuntimeError: boom in the probe"),
             (lambda: _open(llama_cpp, str(cut)), ChildError, "Failed to load model from file"),
             (lambda: _open(llama_cpp, str(text)), DataError, "is not a GGUF file (it starts with b'not '"),
             (lambda: _open(llama_cpp, str(tmp_path)), DataError, "is a folder, not a GGUF file"),
             (lambda: _open(llama_cpp, str(tmp_path / "nope.gguf")), DataError, "nope.gguf does not exist")]
    for make, kind, needle in cases:
        with pytest.raises(kind) as info:
            make()
        errors.append(info.value)
        assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert "(llama.cpp: " in str(errors[1]) and "file bounds" in str(errors[1])  # llama.cpp's own reason
    assert set(live_children()) == before


def test_bench_decode_crash_rows_keep_the_markdown_table(capsys: pytest.CaptureFixture) -> None:
    """A crash message (stderr lines joined by ' | ', line breaks) is one cell of one table row."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_decode", Path(__file__).resolve().parents[1] / "bench" / "decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    measured = {"bench": "decode", "size": "s", "params": 1e6, "engine": "tinylm float32", "tokens_per_s": 10.0,
                "tokens_per_cpu_s": 5.0, "weight_MB_per_token": 1.0, "weights_GBps": 0.1, "compile_warmup_s": None}
    crash = {"bench": "decode", "size": "s", "engine": "llama.cpp f32",
             "skipped": "crashed: died with SIGSEGV; last lines of its stderr: Fatal Python error | Current thread\nx"}
    bench.tables([measured, crash], {"copy_GBps": 1.0, "read_GBps": 1.0})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    cells = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
    assert len(cells) == 1, lines  # every row has the header's columns
    assert any("Fatal Python error \\| Current thread x" in line for line in lines), lines
