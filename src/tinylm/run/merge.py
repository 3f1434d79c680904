"""`tinylm merge`: a LoRA run's adapter folded into its base's weights, written as a standalone run.

    adapter run ─► load (base weights + adapter "default") ─► Run.merge_adapter: W + (alpha / r) B A (a tied
    head with an adapter untied) ─► out_dir: config.json (finetune.merged = true, train.out_dir the new
    directory), tokenizer, model.safetensors; config.json written last (a folder with it is a complete run)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tinylm import fileio
from tinylm.errors import CheckpointError
from tinylm.run.layout import CONFIG_FILE, MODEL_FILE, write_config
from tinylm.run.run import load
from tinylm.run.weights import save_weights


def merge(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> dict[str, Any]:
    """Fold LoRA run `run_dir`'s adapter into its base's weights and write the result as a standalone run
    `out_dir` (config.json with finetune.merged = true, tokenizer, model.safetensors). A tied head with an
    adapter is untied. Returns a summary."""
    run_dir, out = Path(run_dir), Path(out_dir)
    if (out / CONFIG_FILE).exists():
        raise CheckpointError(f"{out} is already a run directory; choose another --out")
    run = load(run_dir, checkpoint=checkpoint, device="cpu", dtype="float32")
    if not run.config.finetune.is_adapter_run:
        raise CheckpointError(f"{run_dir} is not a LoRA adapter run (it has its own weights); nothing to merge")
    tied = run.model.cfg.tie_weights
    run.merge_adapter()
    cfg = copy.deepcopy(run.config)
    cfg.model = run.model.cfg
    cfg.finetune.merged = True
    cfg.description = f"{fileio.absolute(run_dir)} merged into its base {cfg.finetune.base}"
    cfg.train.out_dir = fileio.absolute(out)  # the merged run's own directory, not the adapter run's
    out.mkdir(parents=True, exist_ok=True)
    run.tokenizer.save(out)
    meta = {"step": run.metadata.get("step", 0), "merged_from": str(run_dir.resolve()),
            "tokenizer_fingerprint": run.tokenizer.fingerprint()}
    sha = save_weights(run.model, out / MODEL_FILE, meta)
    write_config(out, cfg)  # last: a directory with config.json is a complete run
    return {"out_dir": str(out), "params": run.model.num_params(), "sha256": sha,
            "adapter": str(run.weights), "untied": tied and not run.model.cfg.tie_weights}
