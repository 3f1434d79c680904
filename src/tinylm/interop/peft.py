"""A tinylm LoRA run as a Hugging Face PEFT adapter directory.

    export_peft(run_dir, out_dir)   adapter_config.json + adapter_model.safetensors (+ the tokenizer with the
                                    chat template), for the base run exported with `export_hf`:
    peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(EXPORTED_BASE), out_dir)

Tensor names are PEFT's for the transformers model the base exports to (`interop/hf.py` picks it):

    tinylm layer          GPT2LMHeadModel (Conv1D layers)      LlamaForCausalLM
    blocks.i.attn.qkv     transformer.h.i.attn.c_attn          model.layers.i.self_attn.{q,k,v}_proj
    blocks.i.attn.proj    transformer.h.i.attn.c_proj          model.layers.i.self_attn.o_proj
    blocks.i.mlp.fc       transformer.h.i.mlp.c_fc             model.layers.i.mlp.{gate,up}_proj
    blocks.i.mlp.proj     transformer.h.i.mlp.c_proj           model.layers.i.mlp.down_proj
    head                  lm_head                              lm_head

each as `base_model.model.<name>.lora_A.weight` (r, in) and `.lora_B.weight` (out, r). PEFT applies
(alpha / r) * B A x to each layer's input x whatever the layer's storage (GPT-2's Conv1D stores its
weight transposed, `fan_in_fan_out`), so GPT-2's A and B are tinylm's. Llama keeps q, k, v (and gate,
up) apart where tinylm fuses them: their update B A splits by rows into [B_q; B_k; B_v] A, so each
projection gets its block of B's rows and a copy of the shared A, with the same r and alpha: exactly
the fused update.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from tinylm import fileio
from tinylm.version import __version__
from tinylm.console import warn
from tinylm.errors import ExportError
from tinylm.interop.hf import check_export_dir, export_family
from tinylm.interop.hf_tokenizer import export_tokenizer
from tinylm.model import lora
from tinylm.run.run import load

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
GPT2_NAMES = {"attn.qkv": ["attn.c_attn"], "attn.proj": ["attn.c_proj"], "mlp.fc": ["mlp.c_fc"],
              "mlp.proj": ["mlp.c_proj"]}
LLAMA_NAMES = {"attn.qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
               "attn.proj": ["self_attn.o_proj"], "mlp.fc": ["mlp.gate_proj", "mlp.up_proj"],
               "mlp.proj": ["mlp.down_proj"]}


def _row_blocks(cfg: Any, layer: str) -> list[int]:
    """How a fused layer's output rows split into the Llama projections (q, k, v or gate, up)."""
    if layer == "attn.qkv":
        return [cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim]
    if layer == "mlp.fc":
        return [cfg.ff_width, cfg.ff_width]
    return []


def peft_tensors(model: torch.nn.Module, family: str,
                 name: str = "default") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Adapter `name` of a tinylm model under PEFT's names for `family` ("gpt2" or "llama"), and the
    `target_modules` (module-name suffixes PEFT matches)."""
    state = lora.adapter_state(model, name)
    out: dict[str, torch.Tensor] = {}
    targets: list[str] = []
    for key, a in state.items():
        if not key.endswith(".lora_A"):
            continue
        layer_name = key[: -len(".lora_A")]
        b = state[f"{layer_name}.lora_B"]
        if layer_name == "head":
            pieces, names = [b], ["lm_head"]
        else:
            _, index, layer = layer_name.split(".", 2)  # blocks.<i>.<layer>
            if family == "gpt2":
                names = [f"transformer.h.{index}.{n}" for n in GPT2_NAMES[layer]]
                pieces = [b]
            else:
                names = [f"model.layers.{index}.{n}" for n in LLAMA_NAMES[layer]]
                blocks = _row_blocks(model.cfg, layer)
                pieces = list(b.split(blocks, dim=0)) if blocks else [b]
        for module, b_rows in zip(names, pieces, strict=True):
            out[f"base_model.model.{module}.lora_A.weight"] = a.clone().contiguous()
            out[f"base_model.model.{module}.lora_B.weight"] = b_rows.clone().contiguous()
            suffix = module if module == "lm_head" else module.split(".", 3)[-1]
            if suffix not in targets:
                targets.append(suffix)
    return out, targets


def export_peft(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best",
                base_model: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write LoRA run `run_dir`'s adapter as a PEFT adapter directory `out_dir` (see the module docstring).
    `out_dir` must be new or empty, or an earlier export with `overwrite` (`check_export_dir`). Without
    `base_model`, adapter_config.json names the tinylm base run (a warning says so: transformers cannot
    load a run directory, so `AutoPeftModelForCausalLM` needs the base's HF export or Hub id there).
    Returns a summary (family, out_dir, weights, tensors, target_modules, base)."""
    check_export_dir(out_dir, overwrite)
    run = load(run_dir, checkpoint=checkpoint, device="cpu", dtype="float32")
    cfg = run.config
    if not cfg.finetune.is_adapter_run:
        raise ExportError(f"{run_dir} is not a LoRA adapter run; export it whole with --format hf")
    if lora.extra_trainable(run.model, cfg.lora):
        raise ExportError(f"{run_dir} also trained base biases or norms, which a PEFT LoRA adapter does not hold; "
                          f"export the merged model instead (`tinylm export {run_dir} --format hf`)")
    family, _, _ = export_family(run.model.cfg, run.tokenizer)
    tensors, targets = peft_tensors(run.model, family)
    conv1d = family == "gpt2" and any(t != "lm_head" for t in targets)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        # a local folder is recorded absolute (PEFT would read a relative one from its own working directory)
        "base_model_name_or_path": (fileio.absolute(base_model) if base_model and os.path.isdir(base_model)
                                    else base_model or cfg.finetune.base),
        "r": cfg.lora.r,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout,
        "target_modules": targets,
        "fan_in_fan_out": conv1d,  # GPT-2's Conv1D layers store (in, out) weights
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "revision": None,
    }
    if not base_model:
        warn(f"adapter_config.json names the tinylm run {cfg.finetune.base} as the base, which transformers cannot "
             "load: for peft.AutoPeftModelForCausalLM, pass --base-model with the folder of `tinylm export "
             f"{cfg.finetune.base} --format hf` (or a Hub id); PeftModel.from_pretrained(model, ...) works either way")
    data = safetensors.torch.save(tensors, metadata={"format": "pt", "exported_by": f"tinylm {__version__}"})
    with fileio.left_as_found(out_dir) as out:  # a failed export leaves no half-written folder behind
        out.mkdir(parents=True, exist_ok=True)
        fileio.write_bytes(out / ADAPTER_WEIGHTS, data)
        fileio.write_json(out / ADAPTER_CONFIG, config)
        export_tokenizer(run.tokenizer, out, model_max_length=run.model.cfg.context, chat_template=run.chat_template)
    return {"family": family, "out_dir": str(out), "weights": str(run.weights), "tensors": len(tensors),
            "target_modules": targets, "base": cfg.finetune.base}
