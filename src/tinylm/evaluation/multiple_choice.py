"""Multiple-choice and cloze evaluation: HellaSwag, any `{context, choices, label}` set, and
LAMBADA-style last-word accuracy.

    jsonl file ─► read_items (checked line by line) ─► Items (context, choices, label)
        HellaSwag records are prompted as lm-evaluation-harness 0.4.13 prompts them (tasks.hellaswag_doc:
        activity label, ctx_a, capitalised ctx_b, bracketed WikiHow markup removed)
    ─► subsample (--limit N --seed S: a seeded subset in file order)
    ─► encode_items: (context, choice) -> (context ids, choice ids) by the harness's rule
        (loglikelihood.encode_pair); an item that cannot be scored is a one-line error first
    ─► loglikelihood.score_requests (cut from the left to the context; shared contexts scored once)
    ─► score_items: accuracy (the choice with the highest total log-probability) and accuracy_norm
        (divided by the choice's length in characters), or the cloze accuracy (greedy decoding
        reproduces the continuation) ─► evals.jsonl

On the whole HellaSwag validation file, `--hellaswag` gives the harness's acc and acc_norm, those of
`tinylm eval --tasks hellaswag` (tasks.py).

File formats (JSON lines):
    HellaSwag   {"activity_label", "ctx_a", "ctx_b", "ctx", "endings": [4 strings], "label": 0-3, ...}
                (rowanz/hellaswag; a record with only "ctx" is prompted with it)
    choices     {"context": ..., "choices": [strings], "label": int}
    cloze       {"context": ..., "continuation": ...}   (correct if greedy decoding reproduces it)
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from tinylm import fileio
from tinylm.console import warn
from tinylm.data.sources import json_lines
from tinylm.errors import DataError
from tinylm.evaluation.loglikelihood import Request, encode_pair, score_requests
from tinylm.evaluation.tasks import hellaswag_doc
from tinylm.tokenizers.prompt import encode_text
from tinylm.config.fields import integer
from tinylm.tokenizers import Tokenizer

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_FILE = "hellaswag_val.jsonl"


@dataclass
class Item:
    context: str
    choices: list[str]  # for a cloze item, the one continuation
    label: int = 0
    where: str = ""  # "FILE line N", for messages


@dataclass
class ChoiceResult:
    task: str
    items: int
    accuracy: float
    accuracy_norm: float | None  # per-character normalised (None for cloze sets)
    mean_logprob: float  # mean log-probability of the correct choice, nats per token

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- reading sets


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    found = False
    for number, record in json_lines(path):
        found = True
        yield number, record
    if not found:
        raise DataError(f"{path} is empty; give a file with one JSON object per line")


def _field(path: Path, number: int, record: dict, key: str, kind: type, digits: bool = False) -> Any:
    """record[key] checked to be of `kind` (int: an int64 and no bool); with `digits`, a string of
    ASCII digits is read as an int too (HellaSwag's own files write labels as strings, "2")."""
    if key not in record:
        raise DataError(f"{path} line {number} has no {key!r} field (it has: {', '.join(record)})")
    value = record[key]
    if kind is int:  # a label: JSON's true is no index (isinstance(True, int) in Python)
        if digits and isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        return integer(value, f"{path} line {number}: {key!r}",
                       note=" (the 0-based index of the correct choice)")
    if not isinstance(value, kind) or (kind is list and not all(isinstance(c, str) for c in value)):
        wanted = "a list of strings" if kind is list else kind.__name__
        raise DataError(f"{path} line {number}: {key!r} must be {wanted}")
    return value


def read_items(path: str | Path, kind: str) -> list[Item]:
    """The items of a `hellaswag`, `choices` or `cloze` jsonl file, checked line by line."""
    path = Path(path)
    keys = {"hellaswag": ("ctx", "endings", "label"), "choices": ("context", "choices", "label"),
            "cloze": ("context", "continuation", None)}[kind]
    items = []
    for number, record in _records(path):
        where = f"{path} line {number}"
        if kind == "hellaswag":
            official = [k for k in ("activity_label", "ctx_a", "ctx_b") if k in record]
            for key in official or ["ctx"]:
                _field(path, number, record, key, str)
            choices = _field(path, number, record, keys[1], list)
            label = _field(path, number, record, keys[2], int, digits=True)
            if len(choices) < 2 or not 0 <= label < len(choices):
                raise DataError(f"{path} line {number}: label {label} does not index its {len(choices)} choices")
            doc = hellaswag_doc({**record, "label": label})
            # the endings continue the context's sentence: the harness's target delimiter, a space
            items.append(Item(doc["query"], [" " + c for c in doc["choices"]], doc["gold"], where))
            continue
        context = _field(path, number, record, keys[0], str)
        if kind == "cloze":
            items.append(Item(context, [_field(path, number, record, keys[1], str)], where=where))
            continue
        choices = _field(path, number, record, keys[1], list)
        label = _field(path, number, record, keys[2], int)
        if len(choices) < 2 or not 0 <= label < len(choices):
            raise DataError(f"{path} line {number}: label {label} does not index its {len(choices)} choices")
        items.append(Item(context, choices, label, where))
    return items


def subsample(items: list[Item], limit: int, seed: int) -> list[Item]:
    """A seeded random subset of `limit` items, in file order (all of them when limit is 0)."""
    if not limit or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def hellaswag_file(path: str = "", source_dir: str = "") -> Path:
    """The HellaSwag validation file: `path`, else a local copy ($TINYLM_DATA_DIR/hellaswag/),
    else the download cache, downloading it from the official repository if needed."""
    from tinylm.data import remote

    if path:
        return Path(path)
    local = source_dir or os.environ.get("TINYLM_DATA_DIR", "")
    if local and (Path(local) / "hellaswag" / HELLASWAG_FILE).is_file():
        return Path(local) / "hellaswag" / HELLASWAG_FILE
    return remote.download(HELLASWAG_URL, fileio.cache_root() / "downloads" / "hellaswag" / HELLASWAG_FILE,
                           description="hellaswag")


# --------------------------------------------------------------------------- scoring


def encode_items(tokenizer: Tokenizer, items: list[Item]) -> list[tuple[int, Request]]:
    """(item index, (context ids, choice ids)) for every choice of every item, by the harness's rule
    (`loglikelihood.encode_pair`); raises the one-line error of the first choice that encodes to no
    tokens, naming the item, before any scoring."""
    out = []
    for i, item in enumerate(items):
        where = f"{item.where}: " if item.where else ""
        for j, choice in enumerate(item.choices):
            name = f"choice {j + 1}" if len(item.choices) > 1 else "the continuation"
            encode_text(tokenizer, choice, item=f"{where}{name}", empty="error")
            out.append((i, encode_pair(tokenizer, item.context, choice)))
    return out


@torch.no_grad()  # scoring builds no autograd graph (no_grad, not inference_mode: training calls it too)
def choice_logprobs(model: torch.nn.Module, tokenizer: Tokenizer, items: list[Item], *, batch_size: int = 32,
                    device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                    show_progress: bool = False, description: str = "choices") -> list[list[tuple[float, int, bool]]]:
    """Per item, per choice: (sum of log-probs of the choice tokens, their count, whether greedy
    decoding reproduces them). Runs without autograd."""
    flat = encode_items(tokenizer, items)
    scored = score_requests(model, [request for _, request in flat], batch_size=batch_size, device=device,
                            dtype=dtype, show_progress=show_progress, description=description)
    results: list[list[tuple[float, int, bool]]] = [[] for _ in items]
    for (i, _), s in zip(flat, scored, strict=True):
        results[i].append((s.logprob, s.tokens, s.greedy))
    return results


def score_items(model: torch.nn.Module, tokenizer: Tokenizer, items: list[Item], task: str, **options: Any
                ) -> ChoiceResult:
    """Accuracy (and normalised accuracy) of a multiple-choice set, or last-word accuracy of a cloze set."""
    scored = choice_logprobs(model, tokenizer, items, description=task, **options)
    if task == "cloze":
        correct = sum(choices[0][2] for choices in scored)
        nats = sum(choices[0][0] for choices in scored)
        count = sum(choices[0][1] for choices in scored)
        return ChoiceResult(task, len(items), correct / len(items), None, nats / count)
    hits = hits_norm = 0
    nats = count = 0.0
    for item, choices in zip(items, scored, strict=True):
        totals = [s for s, _, _ in choices]
        per_char = [s / max(len(c.strip()), 1) for s, c in zip(totals, item.choices, strict=True)]
        hits += max(range(len(totals)), key=totals.__getitem__) == item.label
        hits_norm += max(range(len(per_char)), key=per_char.__getitem__) == item.label
        nats += choices[item.label][0]
        count += choices[item.label][1]
    return ChoiceResult(task, len(items), hits / len(items), hits_norm / len(items), nats / max(count, 1))


def describe(result: ChoiceResult) -> str:
    norm = f"   accuracy (per-char normalised) {result.accuracy_norm:.4f}" if result.accuracy_norm is not None else ""
    ppl = math.exp(min(-result.mean_logprob, 700.0))
    return (f"{result.task}: accuracy {result.accuracy:.4f}{norm}   on {result.items:,} items "
            f"(correct answers: {-result.mean_logprob:.3f} nats/token, perplexity {ppl:.2f})")


def evaluate_choices(run_dir: str | Path, cfg: Any, show_progress: bool = True) -> ChoiceResult:
    """`tinylm eval --hellaswag/--choices/--cloze`: score a run and append the result to evals.jsonl."""
    from tinylm.run import load, record_eval

    cfg.validate()
    task, path = next((t, p) for t, p in (("hellaswag", cfg.hellaswag), ("choices", cfg.choices),
                                          ("cloze", cfg.cloze)) if p)
    if task == "hellaswag":
        path = str(hellaswag_file("" if path == "default" else path, cfg.source_dir))
    items = subsample(read_items(path, task), cfg.limit, cfg.seed)
    run = load(run_dir, **cfg.load_options())
    unknown = sum(run.tokenizer.count_unknown(text) for item in items for text in [item.context, *item.choices])
    if unknown:
        warn(f"{unknown:,} {run.tokenizer.unit}(s) of {path} are not in the run's vocabulary and count as <unk>")
    result = score_items(run.model, run.tokenizer, items, task, batch_size=cfg.batch_size, device=run.device,
                         dtype=run.dtype, show_progress=show_progress)
    record_eval(run, {"data": fileio.absolute(path), "sha256": fileio.sha256_file(path), "limit": cfg.limit,
                      "seed": cfg.seed, **result.to_dict()})
    return result
