"""`tinylm eval`: score a run on a prepared data split or on a text file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tinylm.config import EvalConfig
from tinylm.console import warn
from tinylm.data.prepare import encode_documents, load_split, read_meta
from tinylm.data.sources import read_source
from tinylm.errors import ConfigError, DataError
from tinylm.evaluation.perplexity import LMEval, score_tokens, summarize
from tinylm.rundir import EVALS_FILE, Run, load


def _first_token_bytes(run: Run, tokens: np.ndarray) -> int:
    return len(run.tokenizer.decode([int(tokens[0])]).encode("utf-8"))


def _from_data_dir(run: Run, data_dir: str, split: str) -> tuple[np.ndarray, int, str]:
    meta = read_meta(data_dir)
    if meta["tokenizer"]["fingerprint"] != run.tokenizer.fingerprint():
        raise DataError(f"{data_dir} was prepared with a different tokenizer than {run.run_dir} "
                        f"uses; prepare it with `tinylm prepare SOURCE --tokenizer-from {run.run_dir}`")
    tokens = load_split(data_dir, split)
    nbytes = meta["splits"][split]["bytes"]
    return tokens, nbytes, meta["source"]["sha256"]


def _from_text(run: Run, path: str, errors: str) -> tuple[np.ndarray, int, str]:
    src = read_source(path, errors)
    unknown = sum(run.tokenizer.count_unknown(d) for d in src.documents())
    if unknown:
        warn(f"{unknown:,} {run.tokenizer.unit}(s) of {path} are not in the run's vocabulary and count as <unk>")
    tokens, nbytes = encode_documents(run.tokenizer, src.documents())
    if len(tokens) < 2:
        raise DataError(f"{path} holds fewer than 2 tokens; nothing to score")
    return tokens, nbytes, src.sha256


def evaluate(run_dir: str | Path, cfg: EvalConfig, show_progress: bool = True) -> LMEval:
    """Loss, perplexity and bits per byte of a run on `cfg.data` (a split) or `cfg.text`;
    the result is also appended to the run's evals.jsonl."""
    if bool(cfg.data) == bool(cfg.text):
        raise ConfigError("give exactly one of --data DATA_DIR or --text FILE")
    run = load(run_dir, cfg.checkpoint, cfg.device, cfg.dtype)
    if cfg.data:
        tokens, nbytes, sha = _from_data_dir(run, cfg.data, cfg.split)
    else:
        tokens, nbytes, sha = _from_text(run, cfg.text, cfg.errors)
    nats, count = score_tokens(run.model, tokens, batch_size=cfg.batch_size, device=run.device,
                               dtype=run.dtype, show_progress=show_progress)
    result = summarize(nats, count, nbytes - _first_token_bytes(run, tokens))
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights": run.weights.name,
              "step": run.metadata.get("step"),
              "data": cfg.data or cfg.text, "split": cfg.split if cfg.data else None,
              "sha256": sha, "dtype": str(run.dtype).removeprefix("torch."), **result.to_dict()}
    with open(Path(run_dir) / EVALS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return result
