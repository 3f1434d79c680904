"""Export tinylm runs to Hugging Face transformers directories, and import GPT-2 ones.

    export_hf(run_dir, out_dir)   config.json, model.safetensors, generation_config.json and the
                                  tokenizer: `AutoModelForCausalLM.from_pretrained(out_dir)` loads it;
                                  a LoRA run is exported merged into its base, and a fine-tuned run's
                                  template goes into tokenizer_config.json as `chat_template`
    import_hf(src_dir, run_dir)   a transformers GPT-2 directory (model.safetensors or
                                  pytorch_model.bin) -> a tinylm run directory for `tinylm sample`/`eval`

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

from tinylm import __version__, fileio
from tinylm.config import RunConfig
from tinylm.errors import CheckpointError, ConfigError, ExportError
from tinylm.interop import llama
from tinylm.interop.gpt2 import from_gpt2_state, gpt2_config, gpt2_problems, model_config_from_gpt2, to_gpt2_state
from tinylm.interop.hf_tokenizer import export_tokenizer
from tinylm.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer

SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
_WHY_NOT_LLAMA = {
    "sinusoidal": "sinusoidal positions have no transformers equivalent",
    "none": "a model without position information has no transformers equivalent",
}


def _family(cfg, eot_id: int | None) -> tuple[str, dict[str, Any], Any]:
    """(family name, transformers config dict, state-dict builder) for the model config `cfg`."""
    problems = gpt2_problems(cfg)
    if not problems:
        return "gpt2", gpt2_config(cfg, eot_id), to_gpt2_state
    why_not_llama = llama.llama_incompatibility(cfg)
    if why_not_llama is None:
        return "llama", llama.llama_config(cfg, bos_token_id=eot_id, eos_token_id=eot_id), llama.to_llama_state
    reason = _WHY_NOT_LLAMA.get(cfg.pos, f"Llama cannot express it ({why_not_llama})")
    raise ExportError(f"cannot export to transformers: {reason}; GPT-2 cannot express {'; '.join(problems)}")


def export_hf(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> dict[str, Any]:
    """Write run `run_dir` as a transformers model directory `out_dir` (a LoRA adapter run merged into its
    base weights). Returns a summary (family, out_dir, weights, parameter count, tensors, whether the
    tokenizer was exported)."""
    from tinylm.model.lora import merge_lora
    from tinylm.rundir import load

    run = load(run_dir, checkpoint=checkpoint, device="cpu", dtype="float32")
    if run.config.finetune.adapter:
        merge_lora(run.model, "default")
    cfg, tokenizer = run.model.cfg, run.tokenizer
    family, config, state_builder = _family(cfg, tokenizer.eot_id)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_builder(run.model).items()}
    config.setdefault("torch_dtype", "float32")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = safetensors.torch.save(state, metadata={"format": "pt", "exported_by": f"tinylm {__version__}"})
    fileio.write_bytes(out / SAFETENSORS_FILE, data)
    fileio.write_json(out / "config.json", config)
    generation = {"_from_model_config": True, "bos_token_id": config.get("bos_token_id"),
                  "eos_token_id": config.get("eos_token_id")}
    fileio.write_json(out / "generation_config.json", generation)
    # tinylm's own tokenizer file, so `import_hf` of this directory restores the same tokenizer
    fileio.write_json(out / TOKENIZER_FILE, {"kind": tokenizer.kind, "format": 1, **tokenizer.to_dict()})
    export_tokenizer(tokenizer, out, model_max_length=cfg.context, chat_template=run.chat_template)
    return {"family": family, "out_dir": str(out), "weights": str(run.weights), "tensors": len(state),
            "params": run.model.num_params(), "tokenizer": True}


# --------------------------------------------------------------------------- import


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """The tensors of a transformers directory: model.safetensors, else pytorch_model.bin
    (loaded with weights_only=True: anything but tensors and plain containers is refused)."""
    path = src / SAFETENSORS_FILE
    if path.is_file():
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for bad files
            raise CheckpointError(f"{path} is corrupt or truncated ({e})") from None
    path = src / BIN_FILE
    if path.is_file():
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:  # UnpicklingError for forbidden globals, others for garbage
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path} was refused: it is not a plain tensor file that can be loaded "
                                  f"safely ({first})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path} does not hold a state dict of tensors")
        return state
    raise CheckpointError(f"{src} has no weights: expected {SAFETENSORS_FILE} or {BIN_FILE}")


def _import_tokenizer(src: Path, vocab_size: int) -> Tokenizer:
    """The tinylm tokenizer a tinylm export left in `src`, else GPT-2's."""
    if (src / TOKENIZER_FILE).is_file():
        return load_tokenizer(src)
    from tinylm.tokenizers.gpt2 import GPT2Tokenizer

    tokenizer = GPT2Tokenizer()
    if vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"{src}: vocab_size {vocab_size} is smaller than the GPT-2 tokenizer's "
                          f"{tokenizer.vocab_size}; tinylm imports GPT-2-vocabulary models only")
    return tokenizer


def import_hf(src_dir: str | Path, out_run_dir: str | Path) -> dict[str, Any]:
    """Convert a transformers GPT-2 directory into a tinylm run directory. Returns a summary."""
    from tinylm.model import GPT
    from tinylm.rundir import CONFIG_FILE, MODEL_FILE, save_weights, write_config

    src, out = Path(src_dir), Path(out_run_dir)
    if (out / CONFIG_FILE).exists():
        raise CheckpointError(f"{out} is already a run directory; choose another output directory")
    config_path = src / "config.json"
    if not src.is_dir():
        raise CheckpointError(f"{src} does not exist")
    if not config_path.is_file():
        raise CheckpointError(f"{src} has no config.json; it is not a transformers model directory")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path} is corrupt ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} does not hold a JSON object")
    model_cfg = model_config_from_gpt2(config, origin=str(config_path))
    state = read_hf_weights(src)
    wte = state.get("transformer.wte.weight", state.get("wte.weight"))
    if wte is None:
        raise CheckpointError(f"{src}: the weights have no transformer.wte.weight (the token embedding)")
    if wte.shape[0] != model_cfg.vocab_size:
        raise CheckpointError(f"{src}: config.json has vocab_size {model_cfg.vocab_size} but the token embedding "
                              f"has {wte.shape[0]} rows")
    try:
        tensors = from_gpt2_state(state, model_cfg)
    except KeyError as e:
        raise CheckpointError(f"{src}: the weights lack {e.args[0]}") from None
    tokenizer = _import_tokenizer(src, model_cfg.vocab_size)
    run_cfg = RunConfig(preset="imported", description=f"imported from {src}")
    run_cfg.model = model_cfg
    run_cfg.data.tokenizer = tokenizer.kind
    run_cfg.validate()
    model = GPT(model_cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise CheckpointError(f"{src}: {name} has shape {tuple(tensor.shape)}, config.json implies "
                                  f"{tuple(expected[name])}")
    model.load_state_dict(tensors, strict=not model_cfg.tie_weights)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    save_weights(model, out / MODEL_FILE, {"step": 0, "imported_from": str(src),
                                           "tokenizer_fingerprint": tokenizer.fingerprint()})
    write_config(out, run_cfg)  # last: a directory with config.json is a complete run
    return {"out_dir": str(out), "params": model.num_params(), "tensors": len(tensors), "tokenizer": tokenizer.kind}
