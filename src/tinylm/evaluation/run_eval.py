"""`tinylm eval`: score a run on a prepared data split, a catalog dataset's split, a text file,
or by default on the run's own data (the split it was validated on, from the cache of prepared data).

`--dataset NAME` tokenizes the dataset with the run's own tokenizer into the cache, once per
(dataset files, tokenizer fingerprint, split): a dataset with its own splits (TinyStories,
WikiText-103) has only the requested split prepared; one without (Tiny Shakespeare, ...) is
prepared whole with the usual tail split (train, and the last 10% as val). A run fine-tuned on
instructions or chats is scored by default on its validation examples' response tokens
(data/finetune.py; no bits per byte), one fine-tuned on text on that text's validation split. `--stride` scores
with overlapping windows (see perplexity.py). Every result is appended to the run's evals.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tinylm import fileio
from tinylm.config import DataConfig, EvalConfig
from tinylm.console import console, warn
from tinylm.data.prepare import FORMAT, encode_documents, is_prepared, load_split, prepare, read_meta, resolve_data_dir
from tinylm.data.sources import BUILTIN, Source
from tinylm.data.spec import read_source
from tinylm.errors import ConfigError, DataError
from tinylm.evaluation.perplexity import LMEval, score_examples, score_tokens, summarize
from tinylm.run.run import Run, load, record_eval


def _first_token_bytes(run: Run, tokens: np.ndarray) -> int:
    """UTF-8 bytes of the first token, which is never predicted (a document marker has none)."""
    first = int(tokens[0])
    return 0 if first in run.tokenizer.markers else len(run.tokenizer.decode([first]).encode("utf-8"))


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
    docs = src.documents()
    if not any(d.strip() for d in docs):
        raise DataError(f"{path} has no text in it (it is empty or only whitespace); nothing to score")
    unknown = sum(run.tokenizer.count_unknown(d) for d in docs)
    if unknown:
        warn(f"{unknown:,} {run.tokenizer.unit}(s) of {path} are not in the run's vocabulary and count as <unk>")
    tokens, nbytes = encode_documents(run.tokenizer, docs)
    if len(tokens) < 2:
        raise DataError(f"{path} holds fewer than 2 tokens; nothing to score")
    return tokens, nbytes, src.sha256


def dataset_dir_for(src: Source, fingerprint: str, split: str, errors: str = "strict") -> Path:
    """The cache directory of a dataset prepared for evaluation with one tokenizer (by its
    fingerprint, so runs with different tokenizers never share one): `split` alone for a source
    with its own splits, else the whole source split by the defaults of DataConfig."""
    data = DataConfig()
    key: dict = {"source": src.key, "tokenizer": fingerprint, "format": FORMAT, "errors": errors}
    if src.has_splits:
        key["splits"] = [split]
    else:
        key.update(split=data.split, val=data.val_fraction, max_tokens=src.max_tokens)
    digest = fileio.sha256_bytes(json.dumps(key, sort_keys=True).encode())[:12]
    stem = "".join(c if c.isalnum() else "-" for c in src.name)[:40]
    part = split if src.has_splits else "all"
    return fileio.cache_root() / "prepared" / f"{stem}-{part}-eval-{fingerprint[:8]}-{digest}"


def _from_dataset(run: Run, name: str, split: str, source_dir: str, errors: str) -> tuple[np.ndarray, int, str]:
    from tinylm.data import catalog, hub

    if name not in BUILTIN and name not in catalog.DATASETS and not hub.is_hub_spec(name):
        raise DataError(f"--dataset {name}: not a known dataset (known: {', '.join([*BUILTIN, *catalog.DATASETS])}, "
                        "or hf:OWNER/NAME); score a file with --text FILE or a prepared directory with --data DATA_DIR")
    src = read_source(name, errors, source_dir=source_dir)
    splits = list(src.streams) if src.has_splits else ["train", "val"]
    if split not in splits:
        raise DataError(f"dataset {name} has no {split!r} split (it has: {', '.join(splits)})")
    fingerprint = run.tokenizer.fingerprint()
    out = dataset_dir_for(src, fingerprint, split, errors)
    if not is_prepared(out, src):
        console.print(f"preparing {name} ({split if src.has_splits else 'train/val'}) with the run's "
                      f"{run.tokenizer.kind} tokenizer -> {out}")
        if src.has_splits:  # only the split scored (a validation split is small: tokenize it in this process)
            only = Source(src.name, {split: src.streams[split]}, src.key, src.size, src.files, versions=src.versions)
            prepare(only, run.tokenizer, out, workers=0 if split == "train" else 1)
        else:
            data = DataConfig()
            prepare(src, run.tokenizer, out, data.val_fraction, split=data.split, split_seed=data.split_seed)
    return _from_data_dir(run, str(out), split)


def _own_data_dir(run: Run, run_dir: str | Path) -> Path:
    """The prepared directory of the data `run` was trained on (data.dir, or data.source prepared into the
    cache); a one-line error naming what the run recorded when it cannot be read from here."""
    try:
        return resolve_data_dir(run.config.data)[0]
    except DataError as e:
        data = run.config.data
        what = f"data.dir {data.dir}" if data.dir else f"data.source {data.source}"
        raise DataError(f"{run_dir}'s training data ({what} in its config.json) cannot be read: {e}; "
                        "score other data with --data DATA_DIR, --text FILE or --dataset NAME") from None


def _examples_eval(run: Run, examples: list, cfg: EvalConfig, score_examples) -> LMEval:
    """Loss on the response tokens of a fine-tuned run's validation examples."""
    if cfg.split != "val" or cfg.stride:
        raise ConfigError("a run fine-tuned on instructions or chats is scored on its validation examples; "
                          "--split and --stride apply to text (give --data, --text or --dataset)")
    console.print(f"scoring the response tokens of {len(examples):,} validation examples of {run.config.data.source}")
    nats, count = score_examples(run.model, examples, batch_size=cfg.batch_size, device=run.device, dtype=run.dtype)
    result = summarize(nats, count, None)
    record_eval(run, {"data": run.config.data.source, "dataset": None, "split": "val (response tokens)",
                      "sha256": None, **result.to_dict()})
    return result


def evaluate(run_dir: str | Path, cfg: EvalConfig, show_progress: bool = True) -> LMEval:
    """Loss, perplexity and bits per byte of a run on a split of `cfg.data` (a prepared
    directory) or `cfg.dataset` (a catalog dataset), on `cfg.text`, or with none of them on the
    run's own data (the split it was validated on), in windows of the run's training length
    `cfg.stride` tokens apart; the result is also appended to the run's evals.jsonl."""
    cfg.validate()
    given = [flag for flag, value in (("--data", cfg.data), ("--text", cfg.text), ("--dataset", cfg.dataset))
             if value]
    if len(given) > 1:
        raise ConfigError(f"give one of --data DATA_DIR, --text FILE or --dataset NAME (got {' and '.join(given)})")
    run = load(run_dir, **cfg.validate().load_options())
    window = run.config.seq_len  # positions beyond the training windows were never trained
    if not 0 <= cfg.stride <= window:
        raise ConfigError(f"--stride must be between 0 and the model's training window ({window}), got {cfg.stride}")
    stride = cfg.stride or window
    data = cfg.data
    if not given and run.config.preset == "imported":
        raise ConfigError(f"{run_dir} was {run.config.description}: it has no data of its own to score; "
                          "give --dataset NAME, --text FILE or --data DATA_DIR")
    if not given and run.config.finetune.method:
        from tinylm.data.finetune import resolve_format, run_examples, text_data_dir

        if resolve_format(run.config) != "text":
            return _examples_eval(run, run_examples(run.config, run.tokenizer, quiet=True).val, cfg, score_examples)
        data = str(text_data_dir(run.config, run.tokenizer))
    elif not given:
        data = str(_own_data_dir(run, run_dir))
        name = f" ({run.config.data.source})" if run.config.data.source else ""  # trained with --data DIR: no name
        console.print(f"scoring the {cfg.split} split of the run's data{name} in {data}")
    if data:
        tokens, nbytes, sha = _from_data_dir(run, data, cfg.split)
    elif cfg.dataset:
        tokens, nbytes, sha = _from_dataset(run, cfg.dataset, cfg.split, cfg.source_dir, cfg.errors)
    else:
        tokens, nbytes, sha = _from_text(run, cfg.text, cfg.errors)
    nats, count = score_tokens(run.model, tokens, context=window, batch_size=cfg.batch_size, device=run.device,
                               dtype=run.dtype, stride=stride, show_progress=show_progress)
    result = summarize(nats, count, nbytes - _first_token_bytes(run, tokens), stride=stride)
    record_eval(run, {"data": fileio.absolute(data or cfg.text) if data or cfg.text else cfg.dataset,
                      "dataset": cfg.dataset or None,
                      "split": None if cfg.text else cfg.split, "sha256": sha, **result.to_dict()})
    return result
