"""Export tinylm runs to Hugging Face transformers directories, and import GPT-2 ones.

    export_hf(run_dir, out_dir)   config.json, model.safetensors, generation_config.json and the
                                  tokenizer: `AutoModelForCausalLM.from_pretrained(out_dir)` loads it;
                                  a LoRA run is exported merged into its base, and a fine-tuned run's
                                  template goes into tokenizer_config.json as `chat_template`
    import_hf(src_dir, run_dir)   a transformers GPT-2 or Llama-family directory (model.safetensors,
                                  its shards, or pytorch_model.bin) + tokenizer.json -> a tinylm run
                                  directory for `tinylm sample` / `eval` / `train --resume`

GPT-2 covers learned positions, pre-layernorm, gelu MLPs and full multi-head attention; other
models go to the Llama family (RoPE, RMSNorm, SwiGLU) when `tinylm.interop.llama` can express them. Pickled weights
(pytorch_model.bin) are read with `torch.load(weights_only=True)`, which refuses any object that
is not a tensor or a plain container, so a malicious file cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from tinylm import fileio
from tinylm.version import __version__
from tinylm.config import RunConfig
from tinylm.errors import CheckpointError, ConfigError, ExportError
from tinylm.interop import llama
from tinylm.interop.gpt2 import from_gpt2_state, gpt2_config, gpt2_problems, model_config_from_gpt2, to_gpt2_state
from tinylm.interop.hf_tokenizer import export_tokenizer
from tinylm.model import GPT
from tinylm.run.layout import CONFIG_FILE, MODEL_FILE, folder_file, is_run_config, is_run_dir, write_config
from tinylm.run.run import load
from tinylm.run.weights import save_weights
from tinylm.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer

SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
_WHY_NOT_LLAMA = {
    "sinusoidal": "sinusoidal positions have no transformers equivalent",
    "none": "a model without position information has no transformers equivalent",
}


def export_family(cfg, tokenizer: Tokenizer) -> tuple[str, dict[str, Any], Any]:
    """(family name, transformers config dict, state-dict builder) for the model config `cfg`."""
    eot_id = tokenizer.eot_id
    bos = tokenizer.bos_token_id  # hf: the original BOS, even when not added
    if bos is None:  # what generation starts from without a prompt: word's <sos>, else end-of-text
        bos = eot_id
    problems = gpt2_problems(cfg)
    if not problems:
        return "gpt2", gpt2_config(cfg, eot_id, bos_id=bos), to_gpt2_state
    why_not_llama = llama.llama_incompatibility(cfg)
    if why_not_llama is None:
        config = llama.llama_config(cfg, bos_token_id=bos, eos_token_id=eot_id,
                                    pad_token_id=tokenizer.pad_id)
        return "llama", config, llama.to_llama_state
    reason = _WHY_NOT_LLAMA.get(cfg.pos, f"Llama cannot express it ({why_not_llama})")
    raise ExportError(f"cannot export to transformers: {reason}; GPT-2 cannot express {'; '.join(problems)}")


def check_export_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """`out_dir` as an export's destination: a new or empty folder, or (with `overwrite`) a folder of
    an earlier export, whose files are replaced. A tinylm run directory is always refused (its
    config.json and weights would be replaced), and so is a non-empty folder without `overwrite`
    (files of another export left beside the new ones would mix two models)."""
    out = Path(out_dir)
    if out.is_file():
        raise ExportError(f"{out} is a file; give a folder to export into")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if is_run_dir(out):
        raise ExportError(f"{out} is a tinylm run directory; export into another folder (--out)")
    if not overwrite:
        raise ExportError(f"{out} is not empty; export into a new folder, or pass --overwrite to replace an "
                          "earlier export there")
    return out


def export_hf(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best",
              overwrite: bool = False) -> dict[str, Any]:
    """Write run `run_dir` as a transformers model directory `out_dir` (a LoRA adapter run merged into its
    base weights); `out_dir` must be new or empty, or an earlier export with `overwrite`
    (`check_export_dir`). Returns a summary (family, out_dir, weights, parameter count, tensors,
    whether the tokenizer was exported)."""
    check_export_dir(out_dir, overwrite)

    run = load(run_dir, checkpoint=checkpoint, device="cpu", dtype="float32").merge_adapter()
    cfg, tokenizer = run.model.cfg, run.tokenizer
    family, config, state_builder = export_family(cfg, tokenizer)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_builder(run.model).items()}
    config.setdefault("torch_dtype", "float32")
    with fileio.left_as_found(out_dir) as out:  # a failed export leaves no half-written folder behind
        _write_export(out, run, config, state)
    return {"family": family, "out_dir": str(out), "weights": str(run.weights), "tensors": len(state),
            "params": run.model.num_params(), "tokenizer": True}


def _write_export(out: Path, run: Any, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    cfg, tokenizer = run.model.cfg, run.tokenizer
    out.mkdir(parents=True, exist_ok=True)
    data = safetensors.torch.save(state, metadata={"format": "pt", "exported_by": f"tinylm {__version__}"})
    fileio.write_bytes(out / SAFETENSORS_FILE, data)
    fileio.write_json(out / "config.json", config)
    generation = {"_from_model_config": True, "bos_token_id": config.get("bos_token_id"),
                  "eos_token_id": config.get("eos_token_id")}
    if tokenizer.suppressed_ids:  # ids tinylm never generates (<pad>, <unk>, ...): transformers' generate neither
        generation["suppress_tokens"] = sorted(tokenizer.suppressed_ids)
    original = tokenizer.source_files.get("generation_config.json")  # hf: the imported model's own
    if original is not None:
        fileio.write_text(out / "generation_config.json", original)
    else:
        fileio.write_json(out / "generation_config.json", generation)
    # tinylm's own tokenizer file, so `import_hf` of this directory restores the same tokenizer
    fileio.write_json(out / TOKENIZER_FILE, {"kind": tokenizer.kind, "format": 1, **tokenizer.to_dict()})
    export_tokenizer(tokenizer, out, model_max_length=cfg.context, chat_template=run.chat_template)


# --------------------------------------------------------------------------- import

INDEX_FILES = {SAFETENSORS_FILE: "model.safetensors.index.json", BIN_FILE: "pytorch_model.bin.index.json"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMPORTABLE = "GPT2LMHeadModel and LlamaForCausalLM (also MistralForCausalLM without sliding-window attention)"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"{path} is corrupt or truncated ({e})") from None


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # UnpicklingError for forbidden globals, others for garbage
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} was refused: it is not a plain tensor file that can be loaded "
                              f"safely ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def _read_shards(src: Path, index_name: str, read) -> dict[str, torch.Tensor]:
    """The tensors of a sharded checkpoint: every shard its index's weight_map names, each checked."""
    index_path = src / index_name
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index_path} is corrupt ({type(e).__name__}: {e}); it should map tensor names "
                              "to shard files under \"weight_map\"") from None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        path = src / shard
        if not path.is_file():
            raise CheckpointError(f"{src}: shard {shard} (listed in {index_name}) is missing; download it again")
        state.update(read(path))
    missing = sorted(name for name in weight_map if name not in state)
    if missing:
        raise CheckpointError(f"{src}: {missing[0]} is not in its shard {weight_map[missing[0]]} "
                              f"({len(missing)} tensors missing); download the shards again")
    return state


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """The tensors of a transformers directory: model.safetensors, its shards
    (model.safetensors.index.json), else pytorch_model.bin or its shards (loaded with
    weights_only=True: anything but tensors and plain containers is refused)."""
    for single, read in ((SAFETENSORS_FILE, _read_safetensors), (BIN_FILE, _read_bin)):
        if (src / single).is_file():
            return read(src / single)
        if (src / INDEX_FILES[single]).is_file():
            return _read_shards(src, INDEX_FILES[single], read)
    raise CheckpointError(f"{src} has no weights: expected {SAFETENSORS_FILE} (or its shards with "
                          f"{INDEX_FILES[SAFETENSORS_FILE]}) or {BIN_FILE}")


def import_family(config: dict[str, Any], origin: str) -> str:
    """"gpt2" or "llama" for a transformers config dict; a ConfigError naming any other architecture."""
    arch = (config.get("architectures") or [None])[0]
    model_type = config.get("model_type")
    if arch == "GPT2LMHeadModel" or (arch is None and model_type == "gpt2"):
        return "gpt2"
    if arch in llama.LLAMA_ARCHITECTURES or (arch is None and model_type in llama.LLAMA_ARCHITECTURES.values()):
        return "llama"
    raise ConfigError(f"{origin}: architecture {arch!r} (model_type {model_type!r}) is not supported; "
                      f"tinylm imports {IMPORTABLE}")


def _import_tokenizer(src: Path, family: str, vocab_size: int) -> Tokenizer:
    """The tinylm tokenizer a tinylm export left in `src`, else its tokenizer.json (the hf kind),
    else (GPT-2 models) GPT-2's."""
    from tinylm.tokenizers.hf import TOKENIZER_JSON, HFTokenizer, read_files

    if (src / TOKENIZER_FILE).is_file():
        tokenizer = load_tokenizer(src)
    elif (src / TOKENIZER_JSON).is_file():
        tokenizer = HFTokenizer(read_files(src), origin=str(src))
    elif family == "gpt2":
        from tinylm.tokenizers.gpt2 import GPT2Tokenizer

        tokenizer = GPT2Tokenizer()
    else:
        raise CheckpointError(f"{src} has no {TOKENIZER_JSON}; tinylm reads Hugging Face fast tokenizers (a "
                              "tokenizer.model-only directory: save it once with transformers' "
                              "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))")
    if vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"{src}: vocab_size {vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} "
                          "ids; the model cannot embed every token")
    return tokenizer


def import_hf(src_dir: str | Path, out_run_dir: str | Path, dtype: str = "float32", context: int | None = None
              ) -> dict[str, Any]:
    """Convert a transformers directory (GPT-2 or Llama family; one file or shards; float32, float16
    or bfloat16) into a tinylm run directory whose weights are stored as `dtype` (float32, bfloat16,
    float16, or auto: the checkpoint's). `context` (1 to the model's own) caps a rotary model's context
    (its KV cache size); None keeps the model's. The tokenizer: tinylm's own file when the directory is
    a tinylm export, else tokenizer.json as the `hf` kind (with its special tokens and BOS handling),
    else GPT-2's. Returns a summary."""

    src, out = Path(src_dir), Path(out_run_dir)
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"import dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    if (out / CONFIG_FILE).exists():
        raise CheckpointError(f"{out} is already a run directory; choose another output directory")
    config_path = folder_file(src, "config.json", absent=f"{src} does not exist",
                              is_file=f"{src} is a file; give the model's folder (the one holding config.json and "
                                      "the weights)",
                              missing=f"{src} has no config.json; it is not a transformers model directory")
    if is_run_config(config_path):
        raise CheckpointError(f"{src} is a tinylm run directory, not a transformers one: use it as it is "
                              f"(tinylm sample {src}), or copy it")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path} is corrupt ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} does not hold a JSON object")
    family = import_family(config, str(config_path))
    if family == "gpt2":
        model_cfg, embedding, convert = model_config_from_gpt2(config, str(config_path)), "wte.weight", from_gpt2_state
    else:
        model_cfg, embedding = llama.model_config_from_llama(config, str(config_path)), "model.embed_tokens.weight"
        convert = lambda state, cfg: llama.from_llama_state(cfg, state)  # noqa: E731
    if context is not None:
        if model_cfg.pos == "learned" and context != model_cfg.context:
            raise ConfigError(f"--context {context}: a GPT-2 model's position table fixes its context "
                              f"({model_cfg.context})")
        if not 1 <= context <= model_cfg.context:
            raise ConfigError(f"--context {context}: give 1 to the model's own context, {model_cfg.context} "
                              "(max_position_embeddings); --context caps it, it cannot extend it")
        model_cfg.context = context
    state = read_hf_weights(src)
    emb = next((v for k, v in state.items() if k.endswith(embedding)), None)
    if emb is None:
        raise CheckpointError(f"{src}: the weights have no {embedding} (the token embedding)")
    if emb.shape[0] != model_cfg.vocab_size:
        raise CheckpointError(f"{src}: config.json has vocab_size {model_cfg.vocab_size} but the token embedding "
                              f"has {emb.shape[0]} rows")
    try:
        tensors = convert(state, model_cfg)
    except KeyError as e:
        raise CheckpointError(f"{src}: the weights lack {e.args[0]}") from None
    tokenizer = _import_tokenizer(src, family, model_cfg.vocab_size)
    origin = fileio.absolute(src)  # recorded absolute: it means the same folder from any working directory
    run_cfg = RunConfig(preset="imported", description=f"imported from {origin}")
    run_cfg.model = model_cfg
    run_cfg.data.tokenizer = f"hf:{origin}" if tokenizer.kind == "hf" else tokenizer.kind
    run_cfg.train.out_dir = fileio.absolute(out)
    run_cfg.validate()
    model = GPT(model_cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise CheckpointError(f"{src}: {name} has shape {tuple(tensor.shape)}, config.json implies "
                                  f"{tuple(expected[name])}")
    model.load_state_dict(tensors, strict=not model_cfg.tie_weights)
    stored = emb.dtype if dtype == "auto" else DTYPES[dtype]
    if not stored.is_floating_point:
        raise CheckpointError(f"{src}: the weights are {stored} (quantized?); tinylm imports float checkpoints")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    save_weights(model.to(stored), out / MODEL_FILE, {"step": 0, "imported_from": origin,
                                                      "source_dtype": str(emb.dtype).removeprefix("torch."),
                                                      "tokenizer_fingerprint": tokenizer.fingerprint()})
    write_config(out, run_cfg)  # last: a directory with config.json is a complete run
    return {"out_dir": str(out), "params": model.num_params(), "tensors": len(tensors), "tokenizer": tokenizer.kind,
            "family": family, "dtype": str(stored).removeprefix("torch.")}
