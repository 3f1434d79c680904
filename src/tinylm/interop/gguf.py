"""tinylm runs as GGUF files that llama.cpp and Ollama run, written with the `gguf` package
(llama.cpp's own writer library).

    export_gguf(run_dir, out, dtype="f32" | "f16" | "q8_0", chat_template=None)

    run dir ──► load (float32) ──► architecture ──► tensors under llama.cpp's names ─────────┐
      gpt2   learned positions, pre-LayerNorm, GELU (GQA too; biases written as zeros if absent)
      llama  RoPE, pre-RMSNorm, SwiGLU, GQA (q/k rows permuted: rotate-half -> llama.cpp's pairs)
    tokenizer ──► tokenizer.ggml.* ──────────────────────────────────────────────────────────┤
      gpt2, bpe, hf byte-level BPE   model "gpt2" + the pre-tokenizer llama.cpp splits text with
      hf SentencePiece-style BPE     model "llama" (token scores from the merge ranks)
      (byte fallback)
    chat template (Jinja: Template.jinja(), or an imported tokenizer's own) ─────────────────┤
                                                                                             ▼
                  model.gguf (atomic write) + model.Modelfile beside it (FROM, TEMPLATE, SYSTEM, stop PARAMETERs)

Names and metadata follow llama.cpp's convert_hf_to_gguf.py for GPT2LMHeadModel and LlamaForCausalLM.
f16 and q8_0 store the 2-D weight matrices at that precision (q8_0: blocks of 32 values with one f16
scale; matrices whose rows do not divide into blocks stay f16); norms, biases and the position table
stay f32, as llama.cpp's converter does. Every configuration GGUF cannot express is refused with an
ExportError naming the field and why.

Pre-tokenizers: tinylm's `bpe` splits with GPT-4's regex (cl100k), which is Llama 3's regex; llama.cpp
runs it as pre-tokenizer "dbrx" (the same regex as "llama-bpe", without llama-bpe's ignore_merges and
forced BOS, neither of which tinylm's trained BPE has). `gpt2` is "gpt-2"; hf tokenizers map by their
pre_tokenizer (GPT-2's regex, SmolLM's digits + GPT-2, Llama 3's with or without ignore_merges, Qwen2's).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinylm import fileio
from tinylm.chat.templates import Template, get_template
from tinylm.config import ModelConfig
from tinylm.console import warn
from tinylm.errors import ExportError
from tinylm.interop import llama
from tinylm.interop.llama_cpp import AMX_REPACK_NOTE
from tinylm.run.layout import is_run_dir
from tinylm.run.run import load
from tinylm.runtime import cpu_has_amx
from tinylm.tokenizers import Tokenizer

DTYPES = ("f32", "f16", "q8_0")
QUANTIZED = ("q8_0",)  # repacked by llama.cpp for AMX / CPU_REPACK at load time
MODELFILE_SUFFIX = ".Modelfile"  # model.gguf -> model.Modelfile: one per GGUF file, so exports side by side keep theirs
# tinylm's split-regex family of a byte-level BPE (tokenizers.hf.split_family) -> llama.cpp's tokenizer.ggml.pre
_PRE = {"gpt2": "gpt-2", "digits+gpt2": "smollm", "qwen2": "qwen2"}
_LLAMA_NAMES = (("model.embed_tokens.", "token_embd."), ("model.norm.", "output_norm."), ("lm_head.", "output."),
                ("model.layers.", "blk."), (".input_layernorm.", ".attn_norm."), (".self_attn.q_proj.", ".attn_q."),
                (".self_attn.k_proj.", ".attn_k."), (".self_attn.v_proj.", ".attn_v."),
                (".self_attn.o_proj.", ".attn_output."), (".post_attention_layernorm.", ".ffn_norm."),
                (".mlp.gate_proj.", ".ffn_gate."), (".mlp.up_proj.", ".ffn_up."), (".mlp.down_proj.", ".ffn_down."))
_GPT2_BLOCK = (("ln1", "attn_norm"), ("attn.qkv", "attn_qkv"), ("attn.proj", "attn_output"), ("ln2", "ffn_norm"),
               ("mlp.fc", "ffn_up"), ("mlp.proj", "ffn_down"))


def _gguf():
    """The `gguf` package (extra `gguf`), or an ExportError saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise ExportError("GGUF export needs the gguf package: pip install 'tinylm[gguf]'") from None
    return gguf


# --------------------------------------------------------------------------- architecture


def gguf_architecture(cfg: ModelConfig) -> str:
    """"gpt2" or "llama": the llama.cpp architecture that computes exactly what `cfg` does;
    an ExportError naming the fields that neither can express."""
    gpt2: list[str] = []
    if cfg.pos != "learned":
        gpt2.append(f"model.pos = {cfg.pos!r} (gpt2 has learned positions)")
    if cfg.norm != "layernorm":
        gpt2.append(f"model.norm = {cfg.norm!r} (gpt2 uses layernorm)")
    if cfg.mlp not in ("gelu", "gelu_tanh"):
        gpt2.append(f"model.mlp = {cfg.mlp!r} (gpt2 has a GELU MLP)")
    if cfg.head_size and cfg.head_size * cfg.n_head != cfg.d_model:
        gpt2.append(f"model.head_size = {cfg.head_size} (gpt2's heads split the width evenly)")
    shared = []
    if cfg.norm_position != "pre":
        shared.append(f"model.norm_position = {cfg.norm_position!r} (llama.cpp's gpt2 and llama are pre-norm)")
    if cfg.qk_norm:
        shared.append("model.qk_norm = true (llama.cpp's gpt2 and llama do not normalise queries and keys)")
    if not gpt2 and not shared:
        if cfg.mlp == "gelu":
            warn("model.mlp = 'gelu': llama.cpp's gpt2 computes GELU with the tanh approximation "
                 "(from a float16 table); logits differ slightly from tinylm's exact GELU")
        return "gpt2"
    if not shared and llama.llama_compatible(cfg):
        return "llama"
    why_llama = llama.llama_incompatibility(cfg)
    problems = shared or [*gpt2, *([f"llama: {why_llama}"] if why_llama else [])]
    raise ExportError(f"GGUF cannot express this model: {'; '.join(problems)}")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def _permute_rope(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of q or k (weight or bias) from the rotate-half layout (tinylm, transformers) to the
    pairs of consecutive values llama.cpp's llama rotates (convert_hf_to_gguf.py's `permute`)."""
    return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def gguf_tensors(model: torch.nn.Module, arch: str) -> dict[str, np.ndarray]:
    """The model's float32 tensors under llama.cpp's names for `arch`."""
    cfg: ModelConfig = model.cfg
    if arch == "llama":
        out = {}
        for name, t in llama.to_llama_state(model).items():
            if ".q_proj." in name:
                t = _permute_rope(t, cfg.n_head)
            elif ".k_proj." in name:
                t = _permute_rope(t, cfg.kv_heads)
            for theirs, ours in _LLAMA_NAMES:
                name = name.replace(theirs, ours)
            out[name] = _numpy(t)
        return out
    src = model.state_dict()

    def put(ours: str, theirs: str) -> None:
        weight = src[f"{ours}.weight"]
        out[f"{theirs}.weight"] = _numpy(weight)
        bias = src.get(f"{ours}.bias")  # llama.cpp's gpt2 requires every bias
        out[f"{theirs}.bias"] = _numpy(bias) if bias is not None else np.zeros(weight.shape[0], np.float32)

    out = {"token_embd.weight": _numpy(src["tok_emb.weight"]), "position_embd.weight": _numpy(src["pos_emb.weight"])}
    for i in range(cfg.n_layer):
        for ours, theirs in _GPT2_BLOCK:
            put(f"blocks.{i}.{ours}", f"blk.{i}.{theirs}")
    put("ln_f", "output_norm")
    if not cfg.tie_weights:
        out["output.weight"] = _numpy(src["head.weight"])
    return out


def _stored(name: str, data: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """(data, GGML type) of one tensor at `dtype`: 2-D weights at the requested precision, the rest f32."""
    gguf = _gguf()

    types = gguf.GGMLQuantizationType
    if dtype == "f32" or data.ndim < 2 or name.endswith("_norm.weight") or name == "position_embd.weight":
        return data, types.F32
    if dtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[types.Q8_0][0] == 0:
        return gguf.quants.quantize(data, types.Q8_0), types.Q8_0
    return data.astype(np.float16), types.F16


# --------------------------------------------------------------------------- tokenizer


@dataclass
class GGUFVocab:
    """The tokenizer.ggml.* fields of a tokenizer."""

    model: str  # "gpt2" (byte-level BPE) | "llama" (SentencePiece)
    pre: str  # the pre-tokenizer llama.cpp splits text with
    tokens: list[str]
    types: list[int]
    merges: list[str] | None = None
    scores: list[float] | None = None
    add_space_prefix: bool | None = None
    specials: dict[str, int | None] = field(default_factory=dict)  # bos, eos, unk, pad ids
    add_bos: bool = False


def _tokenizer_json(tokenizer: Tokenizer) -> dict[str, Any]:
    """The tokenizer as a Hugging Face tokenizer.json structure, or an ExportError saying why GGUF cannot hold it."""
    from tinylm.interop.hf_tokenizer import hf_tokenizer

    if tokenizer.kind == "hf":
        return tokenizer.spec
    if tokenizer.kind in ("gpt2", "bpe"):
        return json.loads(hf_tokenizer(tokenizer)[0].to_str())
    reasons = {
        "char": "llama.cpp's tokenizers cannot map characters outside the vocabulary to <unk> (id 0) as tinylm "
                "does (its SentencePiece falls back to byte tokens, which a char vocabulary lacks)",
        "word": "no llama.cpp tokenizer splits words by tinylm's regex and maps unknown words to <unk>",
    }
    raise ExportError(f"GGUF cannot express data.tokenizer = {tokenizer.kind!r}: "
                      f"{reasons.get(tokenizer.kind, 'no llama.cpp tokenizer type fits it')}; "
                      "train with --tokenizer bpe or gpt2 to export to llama.cpp")


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = []
    for m in model.get("merges") or []:
        a, b = (m.split(" ", 1) if isinstance(m, str) else m)
        pairs.append((a, b))
    return pairs


def _id_table(spec: dict[str, Any], rows: int) -> tuple[list[str], list[int], set[int], dict[int, bool]]:
    """(tokens by id padded to `rows` with [PADi], token types, the ids that are padding, added ids -> special)."""
    gguf = _gguf()

    by_id: dict[int, str] = {i: t for t, i in spec["model"].get("vocab", {}).items()}
    added = {a["id"]: bool(a.get("special")) for a in spec.get("added_tokens", [])}
    by_id.update({a["id"]: a["content"] for a in spec.get("added_tokens", [])})
    size = max(rows, max(by_id) + 1 if by_id else 0)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    padding = {i for i in range(size) if i not in by_id}
    types = [gguf.TokenType.UNUSED if i in padding else
             (gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED) if i in added else
             gguf.TokenType.NORMAL for i in range(size)]
    return tokens, [int(t) for t in types], padding, added


def _byte_level(spec: dict[str, Any], rows: int) -> GGUFVocab:
    from tinylm.tokenizers.hf import split_family

    model = spec["model"]
    family = split_family(spec.get("pre_tokenizer"))
    if spec.get("normalizer") is not None:
        raise ExportError(f"GGUF cannot express tokenizer.json normalizer {spec['normalizer'].get('type')!r}: "
                          "llama.cpp's byte-level BPE does not normalise text")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ExportError("GGUF cannot express tokenizer.json model.continuing_subword_prefix / end_of_word_suffix")
    if family == "llama3":
        pre = "llama-bpe" if model.get("ignore_merges") else "dbrx"
    elif family in _PRE and not model.get("ignore_merges"):
        pre = _PRE[family]
    else:
        raise ExportError("GGUF cannot express tokenizer.json pre_tokenizer "
                          f"{json.dumps(spec.get('pre_tokenizer'))[:200]}: it matches none of the llama.cpp "
                          "pre-tokenizers tinylm writes (GPT-2's regex, SmolLM's, Llama 3's, Qwen2's)")
    tokens, types, _, _ = _id_table(spec, rows)
    merges = [f"{a} {b}" for a, b in _merge_pairs(model)]
    return GGUFVocab("gpt2", pre, tokens, types, merges=merges)


def _spm_prefix(spec: dict[str, Any]) -> bool:
    """Whether a SentencePiece-style tokenizer.json prepends "▁" (llama.cpp's add_space_prefix);
    an ExportError when its normalizer / pre_tokenizer is not one llama.cpp reproduces."""
    norm, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    steps = norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm] if norm else []
    keys = [(s.get("type"), s.get("prepend", s.get("pattern", {}).get("String")), s.get("content")) for s in steps]
    prepend, replace = ("Prepend", "▁", None), ("Replace", " ", "▁")
    if pre is None and keys in ([prepend, replace], [replace]):
        return keys[0] == prepend
    if (not steps and pre and pre.get("type") == "Metaspace" and pre.get("replacement") == "▁"
            and not pre.get("split") and pre.get("prepend_scheme") in ("first", "always", "never")):
        return pre.get("prepend_scheme") != "never"
    raise ExportError("GGUF cannot express this SentencePiece-style tokenizer.json normalizer / pre_tokenizer "
                      f"({json.dumps(norm)[:120]} / {json.dumps(pre)[:120]}): llama.cpp's SentencePiece tokenizer "
                      "replaces spaces by '▁' and may prepend one, nothing else")


def _spm_scores(spec: dict[str, Any], tokens: list[str]) -> list[float]:
    """Token scores that make llama.cpp's SentencePiece merging (the adjacent pair whose joined text
    is the best-scored token, leftmost first) equal the BPE merges: -rank of the first merge that
    makes each token. Exact when every split of a token into two tokens is a merge and each token's
    merges are consecutive, as in tokenizer.json files converted from SentencePiece models; otherwise
    an ExportError naming model.merges."""
    pairs = _merge_pairs(spec["model"])
    vocab = spec["model"].get("vocab", {})
    first: dict[str, int] = {}
    previous = -1
    for rank, (a, b) in enumerate(pairs):
        joined = a + b
        if joined in first and first[joined] != previous:
            raise ExportError(f"GGUF cannot express tokenizer.json model.merges: the merges making {joined!r} are "
                              "not consecutive, so llama.cpp's SentencePiece ordering (by token) would differ")
        first.setdefault(joined, rank)
        previous = first[joined]
    merge_set = set(pairs)
    for token in vocab:
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab and (left, right) not in merge_set:
                raise ExportError(f"GGUF cannot express tokenizer.json model.merges: {token!r} splits into the tokens "
                                  f"{left!r} + {right!r}, which is not a merge; llama.cpp's SentencePiece tokenizer "
                                  "joins any such pair (tokenizers converted from SentencePiece list them all)")
    return [-float(first[t]) if t in first else 0.0 for t in tokens]


def _sentencepiece(spec: dict[str, Any], rows: int) -> GGUFVocab:
    gguf = _gguf()

    add_space_prefix = _spm_prefix(spec)
    tokens, types, padding, added = _id_table(spec, rows)
    unk = spec["model"].get("unk_token")
    for i, t in enumerate(tokens):
        if i in padding or i in added:
            continue
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
            types[i] = int(gguf.TokenType.BYTE)
        elif t == unk:
            types[i] = int(gguf.TokenType.UNKNOWN)
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in spec["model"].get("vocab", {})]
    if missing:
        raise ExportError(f"GGUF cannot express this tokenizer.json: model.byte_fallback needs all 256 byte tokens, "
                          f"{missing[0]} is missing")
    return GGUFVocab("llama", "default", tokens, types, scores=_spm_scores(spec, tokens),
                     add_space_prefix=add_space_prefix)


def gguf_vocab(tokenizer: Tokenizer, rows: int) -> GGUFVocab:
    """The tokenizer.ggml.* fields for `tokenizer` with `rows` token ids (the embedding's, so padded
    vocabularies list [PADi] tokens); an ExportError naming the field GGUF cannot express."""
    spec = _tokenizer_json(tokenizer)
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF cannot express tokenizer.json model.type {model.get('type')!r}: tinylm writes "
                          "byte-level BPE and SentencePiece-style BPE (with byte fallback) tokenizers")
    vocab = _sentencepiece(spec, rows) if model.get("byte_fallback") else _byte_level(spec, rows)
    bos = tokenizer.bos_token_id
    vocab.specials = {"bos": bos if bos is not None else tokenizer.eot_id, "eos": tokenizer.eot_id,
                      "unk": tokenizer.unk_id, "pad": tokenizer.pad_id}
    vocab.add_bos = tokenizer.add_bos
    return vocab


# --------------------------------------------------------------------------- chat template and Modelfile


def _go_literal(text: str) -> str:
    """`text` as a Go template action printing it (so no character of it is template syntax)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def ollama_template(template: Template, eot_text: str) -> str:
    """`template` as an Ollama (Go text/template) TEMPLATE over .Messages, rendering what
    `Template.text(messages, eot_text, add_generation_prompt=True)` does."""
    out = "{{ range .Messages }}"
    for i, role in enumerate(("system", "user", "assistant")):
        fmt = template.role(role)
        out += ("{{ if" if i == 0 else "{{ else if") + f' eq .Role "{role}" }}}}' + _go_literal(fmt.prefix)
        out += "{{ .Content }}" + (_go_literal(eot_text) if role == "assistant" else "") + _go_literal(fmt.suffix)
    return out + "{{ end }}{{ end }}" + _go_literal(template.assistant.prefix)


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def modelfile(gguf_name: str, template: Template | None, jinja: str | None, stops: list[str]) -> str:
    """An Ollama Modelfile for the GGUF file `gguf_name` (beside it, named after it: NAME.Modelfile)."""
    own = Path(gguf_name).with_suffix(MODELFILE_SUFFIX).name
    lines = [f"# Ollama: ollama create NAME -f {own}   then   ollama run NAME", f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{ollama_template(template, stops[0] if stops else "")}"""')
        if template.default_system:
            lines.append(f'SYSTEM """{template.default_system}"""')
    elif jinja is not None:
        lines.append("# the chat template is the model's own (tokenizer.chat_template in the GGUF file)")
    else:
        lines.append('TEMPLATE """{{ .Prompt }}"""')
    lines += [f"PARAMETER stop {_quoted(s)}" for s in dict.fromkeys(s for s in stops if s)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- export


def export_gguf(run_dir: str | Path, out: str | Path, dtype: str = "f32", checkpoint: str = "best",
                chat_template: Template | str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write run `run_dir` as the GGUF file `out` (llama.cpp: `llama-cli -m out`) and an Ollama
    `NAME.Modelfile` beside it (model.gguf -> model.Modelfile). `dtype`: f32, f16 or q8_0 for the
    weight matrices. `chat_template`: a
    Template (or a shipped template's name) to embed; default: the run's own, else an imported
    tokenizer's. Returns a summary (out, arch, dtype, bytes, tokenizer model and pre-tokenizer,
    modelfile, tensors, no_repack: whether llama.cpp should be run with --no-repack here, a quantized
    file on a CPU with AMX). Raises ExportError naming what GGUF cannot express, and for a destination in
    a run directory or an existing file (unless `overwrite`)."""
    gguf = _gguf()

    if dtype not in DTYPES:
        raise ExportError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give the GGUF file's path, e.g. {out / 'model.gguf'}")
    if is_run_dir(out.parent):
        raise ExportError(f"{out.parent} is a tinylm run directory; write the GGUF file elsewhere (--out)")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; give a new path, or pass --overwrite to replace it")
    run = load(run_dir, checkpoint=checkpoint, device="cpu", dtype="float32").merge_adapter()  # LoRA: merged
    cfg, tokenizer = run.model.cfg, run.tokenizer
    vocab = gguf_vocab(tokenizer, cfg.vocab_size)  # refusals first: no warning about a file never written
    arch = gguf_architecture(cfg)
    if len(vocab.tokens) != cfg.vocab_size:
        raise ExportError(f"the tokenizer has {len(vocab.tokens)} ids but model.vocab_size is {cfg.vocab_size}")
    if isinstance(chat_template, str):
        chat_template = get_template(chat_template)
    template = chat_template if chat_template is not None else run.chat_template
    jinja = template.jinja() if template is not None else tokenizer.chat_template

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = fileio.temp_path(out)
    with fileio.writing(out, tmp):  # a full disk: "OUT: no space left on its device ...", not numpy's short write
        writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_name(Path(run_dir).resolve().name)
        writer.add_context_length(cfg.context)
        writer.add_embedding_length(cfg.d_model)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(cfg.ff_width)
        writer.add_head_count(cfg.n_head)
        writer.add_head_count_kv(cfg.kv_heads)
        if arch == "gpt2":
            writer.add_layer_norm_eps(cfg.norm_eps)
        else:
            writer.add_layer_norm_rms_eps(cfg.norm_eps)
            writer.add_rope_freq_base(cfg.rope_base)
            writer.add_rope_dimension_count(cfg.head_dim)
            writer.add_vocab_size(cfg.vocab_size)
            if cfg.head_size:
                writer.add_key_length(cfg.head_dim)
                writer.add_value_length(cfg.head_dim)
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model(vocab.model)
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        if vocab.merges is not None:
            writer.add_token_merges(vocab.merges)
        if vocab.scores is not None:
            writer.add_token_scores(vocab.scores)
        if vocab.add_space_prefix is not None:
            writer.add_add_space_prefix(vocab.add_space_prefix)
        for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                         ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
            if vocab.specials.get(key) is not None:
                add(vocab.specials[key])
        writer.add_add_bos_token(vocab.add_bos)
        writer.add_add_eos_token(False)
        if jinja:
            writer.add_chat_template(jinja)
        tensors = gguf_tensors(run.model, arch)
        for name, data in tensors.items():
            stored, kind = _stored(name, data, dtype)
            writer.add_tensor(name, stored, raw_dtype=kind)
        with fileio.writing(out, tmp):
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        fileio.commit(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails again
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    eos_text = tokenizer.decode([tokenizer.eot_id]) if tokenizer.eot_id is not None else ""
    stops = [eos_text, *(tokenizer.decode([i]) for i in tokenizer.stop_ids if i != tokenizer.eot_id),
             *(template.stop if template is not None else [])]
    modelfile_path = out.with_suffix(MODELFILE_SUFFIX)
    try:
        fileio.write_text(modelfile_path, modelfile(out.name, template, jinja, stops))
    except BaseException:  # the export is the pair: keep neither, so the same command works again
        out.unlink(missing_ok=True)
        raise
    no_repack = dtype in QUANTIZED and cpu_has_amx()
    if no_repack:
        warn(f"this CPU has AMX: {AMX_REPACK_NOTE}")
    return {"out": str(out), "no_repack": no_repack, "arch": arch, "dtype": dtype, "bytes": out.stat().st_size,
            "tensors": len(tensors),
            "tokenizer_model": vocab.model, "pre_tokenizer": vocab.pre, "modelfile": str(modelfile_path),
            "weights": str(run.weights), "params": run.model.num_params(), "chat_template": jinja is not None}
