"""Standard benchmarks by name (`tinylm eval RUN --tasks hellaswag,arc_easy,...`), each defined exactly
as EleutherAI's lm-evaluation-harness 0.4.13 defines it (lm_eval/tasks/<task>/*.yaml and utils.py):
the same dataset, split, prompt, target delimiter, choices, few-shot sampling, metrics and names.

    task name ─► TASKS[name]: Hub dataset id + config (the harness's dataset_path / dataset_name),
        eval split (test, else validation), few-shot pool (train, else validation, else test)
    rows ─► load_docs: --task-data DIR/<task>/<split>.jsonl|.parquet (the dataset's own schema, as
        `tinylm eval --tasks T --download-to DIR` writes it), else `datasets.load_dataset` from the
        Hub (its cache; HF_HUB_OFFLINE=1 reads only the cache) ─► dicts, in the dataset's order
    docs (first --limit N) ─► prompts: few-shot examples drawn by the harness's ContextSampler
        (random.Random(--fewshot-seed, default 1234), one draw per doc in order; n + 1 drawn and the
        doc itself removed for tasks without a test split) + "\\n\\n" + the doc's text
    ─► requests: multiple choice: (prompt, " " + choice) per choice (WinoGrande: (prompt with each
        option, " " + the rest of the sentence)); LAMBADA: (text without its last word, " " + last
        word); WikiText: the detokenized page, in rolling windows. A row that cannot be scored (no
        label or one outside the choices, a one-word LAMBADA text, an empty page) is a DataError
        naming its file and row (BadRow), as is a row outside the dataset's schema
    ─► loglikelihood.score_requests (the harness's tokenization and truncation; shared contexts
        scored once) ─► per doc: acc, acc_norm, perplexity / word_perplexity, byte_perplexity,
        bits_per_byte ─► TaskResult per task ─► Report: the table (task, metric, value, stderr,
        items, chance, centered), the CORE-style centered mean ─► evals.jsonl, printed

Metric definitions (lm_eval/api/task.py, api/metrics.py):
    acc         mean over docs of [argmax_i loglik(choice_i) == gold]
    acc_norm    the same with loglik(choice_i) / len(choice_i), the choice's length in characters
                (Python len, without the leading space; the harness calls it byte-length normalised)
    LAMBADA     acc = mean of [greedy decoding reproduces the last word], perplexity = exp(-mean loglik)
    WikiText    word_perplexity = exp(-sum loglik / sum words), byte_perplexity = exp(-sum loglik /
                sum UTF-8 bytes), bits_per_byte = -sum loglik / sum bytes / ln 2; words and bytes of
                the original page (re.split(r"\\s+")), log-likelihood of the detokenized page
    stderr      of a mean: sample standard deviation / sqrt(n), as the harness; of LAMBADA's
                perplexity: the delta method, perplexity x stderr(mean loglik) (the harness
                bootstraps, so its value differs slightly); none for WikiText's (the harness's N/A)
    chance      the expected accuracy of a uniform random guess: mean over docs of 1 / choices
                (0 for LAMBADA); centered = (acc - chance) / (1 - chance) of acc_norm where the task
                reports it, else acc (DCLM's CORE metric: the mean of the centered accuracies)
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tinylm.errors import ConfigError, DataError

HARNESS = "lm-evaluation-harness 0.4.13"
FEWSHOT_SEED = 1234  # the harness's default fewshot_random_seed
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
DATA_SUFFIXES = (".jsonl", ".parquet")


# --------------------------------------------------------------------------- the harness's doc functions


class BadRow(ValueError):
    """A row in the dataset's schema whose values cannot be scored (no label, a label outside the
    choices, no text): `_checked` names the file and row; the message says what is wrong and the fix."""


UNLABELED = "the test split of {where} has no labels: use the validation split"


def hellaswag_preprocess(text: str) -> str:
    """lm_eval/tasks/hellaswag/utils.py `preprocess`: strip, " [title]" -> ". ", drop bracketed
    WikiHow markup, collapse double spaces once."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_doc(doc: dict) -> dict:
    """lm_eval/tasks/hellaswag/utils.py `process_docs`: adds query, choices and gold to the row. A
    row without ctx_a / ctx_b (not the dataset's schema) uses its ctx for them, one without
    activity_label no "label: " prefix."""
    if "ctx_a" in doc or "ctx_b" in doc:
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    else:
        ctx = doc["ctx"]
    if doc["label"] in ("", None):  # the unlabeled test split
        raise BadRow(f"label {doc['label']!r}: " + UNLABELED.format(where="Rowan/hellaswag"))
    head = doc["activity_label"] + ": " if "activity_label" in doc else ""
    return {**doc, "query": hellaswag_preprocess(head + ctx),
            "choices": [hellaswag_preprocess(e) for e in doc["endings"]], "gold": int(doc["label"])}


def wikitext_detokenize(page: str) -> str:
    """lm_eval/tasks/wikitext/preprocess_wikitext.py `wikitext_detokenizer`."""
    string = page
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    string = string.replace(" @-@ ", "-")
    string = string.replace(" @,@ ", ",")
    string = string.replace(" @.@ ", ".")
    string = string.replace(" : ", ": ")
    string = string.replace(" ; ", "; ")
    string = string.replace(" . ", ". ")
    string = string.replace(" ! ", "! ")
    string = string.replace(" ? ", "? ")
    string = string.replace(" , ", ", ")
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    string = string.replace("= = = =", "====")
    string = string.replace("= = =", "===")
    string = string.replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n")
    string = string.replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


def _winogrande_gold(doc: dict) -> int:
    """lm_eval's winogrande doc_to_text: the index of the correct option ("1" -> 0, "2" -> 1)."""
    answer = doc["answer"]
    if answer not in ("1", "2"):
        raise BadRow(f"answer {answer!r} is neither '1' nor '2'" +
                     ("; " + UNLABELED.format(where="allenai/winogrande") if answer in ("", None) else ""))
    return {"1": 0, "2": 1}[answer]


def _winogrande_choices(doc: dict) -> list[str]:
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


def _winogrande_target(doc: dict) -> str:
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


# --------------------------------------------------------------------------- the tasks


@dataclass(frozen=True)
class Task:
    """One benchmark as lm-evaluation-harness 0.4.13 defines it (`source`: its YAML)."""

    name: str
    dataset: str  # the Hub dataset id (the harness's dataset_path)
    config: str | None  # the dataset's configuration (dataset_name)
    kind: str  # multiple_choice | loglikelihood | loglikelihood_rolling (output_type)
    metrics: tuple[str, ...]
    source: str  # the task's YAML in the harness
    version: float  # the YAML's metadata version
    prompt: str  # the prompt format, for `--tasks list` and the docs
    training_split: str | None = None
    validation_split: str | None = None
    test_split: str | None = None
    process: Callable[[dict], dict] | None = None  # process_docs, one row at a time
    text: Callable[[dict], Any] | None = None  # doc_to_text (an int for multiple-input tasks: the gold choice)
    choices: Callable[[dict], list[str]] | None = None  # doc_to_choice
    target: Callable[[dict], Any] | None = None  # doc_to_target (gold index, or the continuation's text)
    multiple_input: bool = False  # the choices are contexts and the target the shared continuation (WinoGrande)
    revision: str | None = None  # the Hub revision (None: the default branch, as the harness)

    @property
    def eval_split(self) -> str:
        """The split the harness scores: test if the task has one, else validation."""
        return self.test_split or self.validation_split  # type: ignore[return-value]

    @property
    def fewshot_split(self) -> str:
        """The split few-shot examples come from: train, else validation, else test."""
        return self.training_split or self.validation_split or self.test_split  # type: ignore[return-value]

    @property
    def removes_eval_doc(self) -> bool:
        """Whether the sampler draws n + 1 examples and drops the doc being scored: the harness passes
        the doc when its few-shot split (None for every task here) equals the test split."""
        return self.test_split is None

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys([self.eval_split, self.fewshot_split]))

    @property
    def where(self) -> str:
        return self.dataset + (f" ({self.config})" if self.config else "")


def _arc(name: str, config: str) -> Task:
    return Task(name, "allenai/ai2_arc", config, "multiple_choice", ("acc", "acc_norm"),
                "lm_eval/tasks/arc/arc_easy.yaml" + ("" if name == "arc_easy" else ", arc_challenge.yaml"), 1.0,
                '"Question: {question}\\nAnswer:" + " " + choice', "train", "validation", "test",
                text=lambda d: f"Question: {d['question']}\nAnswer:", choices=lambda d: list(d["choices"]["text"]),
                target=lambda d: d["choices"]["label"].index(d["answerKey"]))


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("hellaswag", "Rowan/hellaswag", None, "multiple_choice", ("acc", "acc_norm"),
         "lm_eval/tasks/hellaswag/hellaswag.yaml, utils.py", 1.0,
         'preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()) + " " + preprocess(ending)',
         "train", "validation", None, process=hellaswag_doc, text=lambda d: d["query"],
         choices=lambda d: list(d["choices"]), target=lambda d: int(d["label"])),
    _arc("arc_easy", "ARC-Easy"),
    _arc("arc_challenge", "ARC-Challenge"),
    Task("piqa", "baber/piqa", None, "multiple_choice", ("acc", "acc_norm"), "lm_eval/tasks/piqa/piqa.yaml", 1.0,
         '"Question: {goal}\\nAnswer:" + " " + sol1|sol2', "train", "validation", None,
         text=lambda d: f"Question: {d['goal']}\nAnswer:", choices=lambda d: [d["sol1"], d["sol2"]],
         target=lambda d: d["label"]),
    Task("winogrande", "allenai/winogrande", "winogrande_xl", "multiple_choice", ("acc",),
         "lm_eval/tasks/winogrande/default.yaml, preprocess_winogrande.py", 1.0,
         'sentence up to "_" + option1|option2, then " " + the rest of the sentence (partial scoring)',
         "train", "validation", None, text=_winogrande_gold, choices=_winogrande_choices,
         target=_winogrande_target, multiple_input=True),
    Task("lambada_openai", "EleutherAI/lambada_openai", "default", "loglikelihood", ("perplexity", "acc"),
         "lm_eval/tasks/lambada/lambada_openai.yaml", 1.0,
         'text without its last word + " " + last word (greedy: acc)', None, None, "test",
         text=lambda d: " ".join(d["text"].split(" ")[:-1]), target=lambda d: " " + d["text"].split(" ")[-1]),
    Task("openbookqa", "allenai/openbookqa", "main", "multiple_choice", ("acc", "acc_norm"),
         "lm_eval/tasks/openbookqa/openbookqa.yaml", 1.0, 'question_stem + " " + choice', "train", "validation",
         "test", text=lambda d: d["question_stem"], choices=lambda d: list(d["choices"]["text"]),
         target=lambda d: d["choices"]["label"].index(d["answerKey"].lstrip())),
    Task("sciq", "allenai/sciq", None, "multiple_choice", ("acc", "acc_norm"), "lm_eval/tasks/sciq/sciq.yaml", 1.0,
         '"{support.lstrip()}\\nQuestion: {question}\\nAnswer:" + " " + choice', "train", "validation", "test",
         text=lambda d: f"{d['support'].lstrip()}\nQuestion: {d['question']}\nAnswer:",
         choices=lambda d: [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]],
         target=lambda d: 3),
    Task("wikitext", "EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "loglikelihood_rolling",
         ("word_perplexity", "byte_perplexity", "bits_per_byte"),
         "lm_eval/tasks/wikitext/wikitext.yaml, preprocess_wikitext.py", 2.0,
         "the detokenized page, whole (rolling windows of the model's context)", "train", "validation", "test",
         target=lambda d: wikitext_detokenize(d["page"])),
]}


def task_names(spec: str) -> list[str]:
    """The tasks of a --tasks value ("hellaswag,arc_easy"; "all" = every task), checked."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        return list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        from difflib import get_close_matches

        hint = "".join(f" (did you mean {m[0]}?)" for n in unknown[:1] if (m := get_close_matches(n, TASKS, 1)))
        raise ConfigError(f"--tasks: unknown task {', '.join(unknown) or repr(spec)}{hint}; the tasks are "
                          f"{', '.join(TASKS)} (or all; `tinylm eval --tasks list` describes them)")
    return list(dict.fromkeys(names))


def describe_tasks() -> str:
    """`tinylm eval --tasks list`: every task with its dataset, split, metrics and prompt."""
    lines = [f"tasks, defined as in {HARNESS} (zero-shot unless --num-fewshot K):"]
    for t in TASKS.values():
        lines.append(f"  {t.name:<15} {t.where}, {t.eval_split} split; {', '.join(t.metrics)}\n"
                     f"  {'':<15} {t.prompt}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- data


def _read_local(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} line {number} is not JSON ({e.msg}); write one row per line") from None
    return rows


def local_file(task: Task, split: str, task_data: str | Path) -> Path | None:
    """DIR/<task>/<split>.jsonl (or .parquet), if it exists."""
    for suffix in DATA_SUFFIXES:
        path = Path(task_data) / task.name / f"{split}{suffix}"
        if path.is_file():
            return path
    return None


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is on (huggingface_hub's reading of it)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def offline_hint(task: Task, downloading: bool = False) -> str:
    """How to supply a task's rows that the Hub cannot give: --task-data DIR, written by --download-to
    where the Hub can be reached (for a failed --download-to: what it needs), or the Hub cache."""
    if downloading:
        fix = "unset HF_HUB_OFFLINE" if hub_offline() else "run it where the Hub can be reached (or set HF_ENDPOINT to a mirror)"
        return (f"--download-to needs the Hub: {fix}, then give --task-data DIR to `tinylm eval` (copy DIR to a "
                "machine without network)")
    hint = (f"supply its rows with --task-data DIR: `tinylm eval --tasks {task.name} --download-to DIR` where the Hub "
            f"can be reached writes DIR/{task.name}/<split>.jsonl")
    if not hub_offline():
        hint += ", or set HF_HUB_OFFLINE=1 to read the Hub cache of an earlier download"
    return hint


def _from_hub(task: Task, split: str, downloading: bool = False) -> list[dict]:
    from tinylm.data import hub

    try:
        import datasets
    except ImportError:
        raise DataError(f"task {task.name} reads {task.where} through the Hugging Face `datasets` library: "
                        f"pip install 'tinylm[hf]'" + ("" if downloading else f", or {offline_hint(task)}")) from None
    what = f"task {task.name} ({task.where}, {split} split)"
    try:
        ds = datasets.load_dataset(task.dataset, task.config, split=split, revision=task.revision)
    except Exception as e:  # the libraries raise many kinds; unknown ones keep their traceback
        why = hub.unreachable(e)
        if why == "offline":
            raise DataError(f"{what} is not in the Hub cache and offline mode is on (HF_HUB_OFFLINE=1), which "
                            f"forbids downloading it; {offline_hint(task, downloading)}") from None
        if why == "network":
            from huggingface_hub import constants

            raise DataError(f"{what}: cannot reach the Hugging Face Hub at {constants.ENDPOINT} (unreachable); "
                            f"{offline_hint(task, downloading)}") from None
        error = hub.hub_error(e, what, task.dataset)
        if error is None and not isinstance(e, (RuntimeError, ValueError, FileNotFoundError)):
            raise
        reason = str(error) if error else f"{what} cannot be loaded from the Hub ({_first_line(e)})"
        raise DataError(f"{reason}; {offline_hint(task, downloading)}") from None
    return ds.to_list()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_docs(task: Task, split: str, task_data: str | Path = "") -> tuple[list[dict], str]:
    """A split's rows as dicts, in the dataset's order, and where they came from: --task-data's
    file when given (an error naming the file if it is missing), else the Hub through `datasets`."""
    if task_data:
        path = local_file(task, split, task_data)
        if path is None:
            raise DataError(f"task {task.name} needs {Path(task_data) / task.name / (split + '.jsonl')} (the "
                            f"{split} split of {task.where}, one row per line in the dataset's schema); "
                            f"{offline_hint(task)}")
        rows = _read_local(path)
        if not rows:
            raise DataError(f"{path} has no rows; write the {split} split of {task.where} into it")
        return rows, str(path)
    return _from_hub(task, split), f"hf:{task.dataset}" + (f":{task.config}" if task.config else "") + f" {split}"


def download(task: Task, out: str | Path) -> list[Path]:
    """Write the task's splits (eval and few-shot) from the Hub into OUT/<task>/<split>.jsonl, the
    layout --task-data reads."""
    from tinylm import fileio

    written = []
    for split in task.splits:
        rows = _from_hub(task, split, downloading=True)
        path = Path(out) / task.name / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        written.append(path)
    return written


def rows_sha256(rows: Iterable[dict]) -> str:
    """sha256 of the rows as canonical JSON lines (the same for a Hub split and its --task-data copy)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- prompts


class FewshotSampler:
    """lm_eval/api/samplers.py `ContextSampler`: random.Random(seed).sample over the few-shot pool,
    one call per scored doc in order; with `exclude`, n + 1 drawn and docs equal to it removed."""

    def __init__(self, docs: Sequence[dict], seed: int) -> None:
        self.docs = list(docs)
        self.rnd = random.Random(seed)

    def sample(self, n: int, exclude: dict | None = None) -> list[dict]:
        if n == 0:
            return []
        if not self.docs:
            raise DataError("no few-shot examples to draw from")
        if exclude is None:
            return self.rnd.sample(self.docs, n)
        res = [x for x in self.rnd.sample(self.docs, n + 1) if x != exclude][:n]
        if len(res) < n:
            res = self.rnd.sample([x for x in self.docs if x != exclude], n)
        return res


@dataclass
class Doc:
    """One scored doc: its requests (context, continuation) and what its metrics need."""

    requests: list[tuple[str, str]]
    gold: int = 0
    choices: list[str] = field(default_factory=list)  # the choices' texts (acc_norm's lengths)
    words: int = 0  # WikiText: words and UTF-8 bytes of the original page
    bytes: int = 0


def _example(task: Task, doc: dict) -> str:
    """A few-shot example: its text, the target delimiter, its answer, the few-shot delimiter."""
    q, a = task.text(doc) if task.text else "", task.target(doc)  # type: ignore[misc]
    choices = task.choices(doc) if task.choices else None
    if task.multiple_input:
        q, answer = choices[q], a  # type: ignore[index]
    else:
        answer = choices[a] if choices is not None and isinstance(a, int) else a
    return q + TARGET_DELIMITER + answer + FEWSHOT_DELIMITER


def build_doc(task: Task, doc: dict, examples: list[dict]) -> Doc:
    """The requests of one doc, built as the harness's `fewshot_context` + `construct_requests`.
    Raises BadRow for what the harness would score silently or fail on: a WikiText page with no
    text, a LAMBADA text of fewer than two words, a gold label outside the choices (-1: unlabeled)."""
    if task.kind == "loglikelihood_rolling":
        page = doc["page"]
        if not page.strip():
            raise BadRow("the page has no text to score; remove the row or give the page's text")
        return Doc([("", task.target(doc))], words=len(re.split(r"\s+", page)),  # type: ignore[misc]
                   bytes=len(page.encode("utf-8")))
    prefix = "".join(_example(task, ex) for ex in examples)
    target = task.target(doc)  # type: ignore[misc]
    if task.kind == "loglikelihood":
        context = task.text(doc)  # type: ignore[misc]
        if not context.strip() or not target.strip():
            raise BadRow(f"the text {doc['text'][:40]!r} has fewer than two words (LAMBADA scores its last word "
                         "after the rest); give the whole passage")
        return Doc([(prefix + context, target)])
    choices = task.choices(doc)  # type: ignore[misc]
    gold = task.text(doc) if task.multiple_input else target  # type: ignore[misc]
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        fix = (UNLABELED.format(where=task.where) if gold == -1 and task.test_split is None else
               f"give the index of the correct choice, 0 to {len(choices) - 1}")
        raise BadRow(f"its label {gold!r} is not one of its {len(choices)} choices; {fix}")
    if task.multiple_input:
        return Doc([(prefix + c, TARGET_DELIMITER + target) for c in choices], gold=gold, choices=choices)
    return Doc([(prefix + task.text(doc), TARGET_DELIMITER + c) for c in choices], gold=gold,  # type: ignore[misc]
               choices=choices)


def prepare_docs(task: Task, rows: list[dict], where: str) -> list[dict]:
    """Rows -> docs (process_docs), with a one-line error for a row outside the dataset's schema."""
    if task.process is None:
        return rows
    return [_checked(task, where, i, lambda row=row: task.process(row)) for i, row in enumerate(rows)]  # type: ignore[misc]


def _checked(task: Task, where: str, index: int, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except BadRow as e:
        raise DataError(f"{where} row {index + 1} (task {task.name}): {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise DataError(f"{where} row {index + 1} does not fit task {task.name} ({type(e).__name__}: {e}); "
                        f"its rows must be in the schema of {task.where}") from None


def build_docs(task: Task, docs: list[dict], pool: list[dict] | None, num_fewshot: int = 0,
               seed: int = FEWSHOT_SEED, where: str = "", pool_where: str = "") -> list[Doc]:
    """Every doc's requests, few-shot examples drawn from `pool` in doc order (its rows checked as
    the docs are: a bad example is an error naming `pool_where` and its row)."""
    if num_fewshot and task.kind != "loglikelihood_rolling":
        if not pool:
            raise DataError(f"task {task.name}: --num-fewshot {num_fewshot} needs the {task.fewshot_split} split")
        if len(pool) < num_fewshot + task.removes_eval_doc:
            raise DataError(f"task {task.name}: --num-fewshot {num_fewshot} needs at least "
                            f"{num_fewshot + task.removes_eval_doc} rows in its {task.fewshot_split} split "
                            f"(it has {len(pool)})")
    if num_fewshot and task.kind != "loglikelihood_rolling":
        for i, example in enumerate(pool or []):
            _checked(task, pool_where or where or task.name, i, lambda example=example: build_doc(task, example, []))
    sampler = FewshotSampler(pool or [], seed)
    out = []
    for i, doc in enumerate(docs):
        def one(doc: dict = doc) -> Doc:
            shots = [] if task.kind == "loglikelihood_rolling" else sampler.sample(
                num_fewshot, doc if task.removes_eval_doc else None)
            return build_doc(task, doc, shots)

        out.append(_checked(task, where or task.name, i, one))
    return out


# --------------------------------------------------------------------------- metrics


@dataclass
class Metric:
    name: str
    value: float
    stderr: float | None


@dataclass
class TaskResult:
    task: str
    items: int
    metrics: list[Metric]
    chance: float | None  # a random guess's expected accuracy (None: perplexity only)
    centered: float | None  # (headline accuracy - chance) / (1 - chance)
    headline: str | None  # the metric `centered` is computed from
    num_fewshot: int = 0
    data: str = ""
    sha256: str = ""
    seconds: float = 0.0

    def metric(self, name: str) -> float:
        return next(m.value for m in self.metrics if m.name == name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean_stderr(xs: Sequence[float]) -> float | None:
    if len(xs) < 2:
        return None
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))


def _argmax(xs: Sequence[float]) -> int:  # numpy.argmax: the first of equal maxima
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def task_metrics(task: Task, docs: list[Doc], scores: list[list[tuple[float, bool]]]) -> tuple[list[Metric], float | None]:
    """The task's metrics (names and definitions as the harness's) and chance accuracy."""
    n = len(docs)
    if task.kind == "loglikelihood_rolling":
        ll = sum(s[0][0] for s in scores)
        words, nbytes = sum(d.words for d in docs), sum(d.bytes for d in docs)
        return [Metric("word_perplexity", math.exp(-ll / words), None),
                Metric("byte_perplexity", math.exp(-ll / nbytes), None),
                Metric("bits_per_byte", -ll / nbytes / math.log(2), None)], None
    if task.kind == "loglikelihood":
        lls = [s[0][0] for s in scores]
        acc = [float(s[0][1]) for s in scores]
        mean_ll = sum(lls) / n
        ppl = math.exp(-mean_ll)
        se = _mean_stderr(lls)
        return [Metric("perplexity", ppl, None if se is None else ppl * se),
                Metric("acc", sum(acc) / n, _mean_stderr(acc))], 0.0
    acc, acc_norm = [], []
    for doc, s in zip(docs, scores, strict=True):
        lls = [x[0] for x in s]
        acc.append(float(_argmax(lls) == doc.gold))
        norm = [ll / len(c) if c else -math.inf for ll, c in zip(lls, doc.choices, strict=True)]  # numpy: x / 0 = -inf
        acc_norm.append(float(_argmax(norm) == doc.gold))
    metrics = [Metric("acc", sum(acc) / n, _mean_stderr(acc))]
    if "acc_norm" in task.metrics:
        metrics.append(Metric("acc_norm", sum(acc_norm) / n, _mean_stderr(acc_norm)))
    return metrics, sum(1 / len(d.choices) for d in docs) / n


# --------------------------------------------------------------------------- scoring and the report


@dataclass
class Report:
    """One `tinylm eval --tasks` run: a result per task and the CORE-style centered mean."""

    results: list[TaskResult]
    num_fewshot: int
    limit: int
    fewshot_seed: int

    @property
    def centered_mean(self) -> float | None:
        values = [r.centered for r in self.results if r.centered is not None]
        return sum(values) / len(values) if values else None

    def rows(self) -> list[dict[str, Any]]:
        """The table: one row per (task, metric)."""
        out = []
        for r in self.results:
            for m in r.metrics:
                head = m.name == r.headline
                out.append({"task": r.task, "metric": m.name, "value": m.value, "stderr": m.stderr,
                            "items": r.items, "chance": r.chance if head else None,
                            "centered": r.centered if head else None})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": {r.task: r.to_dict() for r in self.results}, "table": self.rows(),
                "centered_mean": self.centered_mean, "num_fewshot": self.num_fewshot, "limit": self.limit,
                "fewshot_seed": self.fewshot_seed, "definitions": HARNESS}

    def table(self) -> str:
        """The table as Markdown, for a terminal or a README."""
        def num(x: float | None, digits: int = 4) -> str:
            return "" if x is None else f"{x:.{digits}f}"

        lines = ["| task | metric | value | stderr | items | chance | centered |",
                 "|---|---|---:|---:|---:|---:|---:|"]
        for row in self.rows():
            lines.append(f"| {row['task']} | {row['metric']} | {num(row['value'])} | {num(row['stderr'])} | "
                         f"{row['items']:,} | {num(row['chance'], 3)} | {num(row['centered'])} |")
        mean = self.centered_mean
        if mean is not None:
            counted = [r.task for r in self.results if r.centered is not None]
            lines.append(f"| centered mean ({len(counted)} task{'' if len(counted) == 1 else 's'}) | | {mean:.4f} "
                         "| | | | |")
        shots = f"{self.num_fewshot}-shot"
        if self.limit:  # the items column has each task's count; a limit above them all cut nothing
            most = max((r.items for r in self.results), default=0)
            shots += (f", first {self.limit:,} items of each task" if most >= self.limit else
                      f", all items (--limit {self.limit:,} is more than any task has)")
        return "\n".join(lines) + f"\n({shots}; task definitions of {HARNESS})"


def score_task(model: Any, tokenizer: Any, task: Task, docs: list[Doc], *, batch_size: int = 16,
               device: Any = None, dtype: Any = None, show_progress: bool = False) -> list[list[tuple[float, bool]]]:
    """(log-likelihood, greedy) per request of every doc, scored together."""
    import torch

    from tinylm.evaluation.loglikelihood import encode_pair, prefix_id, rolling_requests, score_requests, tok_encode
    from tinylm.errors import EmptyInputError

    context = model.cfg.context
    flat: list[tuple[list[int], list[int]]] = []
    owner: list[tuple[int, int]] = []  # (doc, request) of each flat request (rolling: many per request)
    for d, doc in enumerate(docs):
        for r, (ctx, cont) in enumerate(doc.requests):
            if task.kind == "loglikelihood_rolling":
                windows = rolling_requests(tok_encode(tokenizer, cont), prefix_id(tokenizer), context)
                flat += windows
                owner += [(d, r)] * len(windows)
                continue
            pair = encode_pair(tokenizer, ctx, cont)
            if not pair[1]:
                raise EmptyInputError(f"task {task.name} item {d + 1}: the continuation {cont[:20]!r} encodes to no "
                                      "tokens; the row must give it some text")
            flat.append(pair)
            owner.append((d, r))
    scored = score_requests(model, flat, batch_size=batch_size, device=device,
                            dtype=dtype if dtype is not None else torch.float32, show_progress=show_progress,
                            description=task.name)
    out: list[list[list[float | bool]]] = [[[0.0, True] for _ in doc.requests] for doc in docs]
    for (d, r), s in zip(owner, scored, strict=True):
        out[d][r][0] += s.logprob  # type: ignore[operator]
        out[d][r][1] = out[d][r][1] and s.greedy
    return [[(float(ll), bool(g)) for ll, g in doc] for doc in out]  # type: ignore[misc]


def run_task(model: Any, tokenizer: Any, task: Task, *, num_fewshot: int = 0, limit: int = 0,
             fewshot_seed: int = FEWSHOT_SEED, task_data: str | Path = "", batch_size: int = 16,
             device: Any = None, dtype: Any = None, show_progress: bool = False) -> TaskResult:
    """Score one task on a model: load its rows, build the prompts, score, compute the metrics."""
    import time

    from tinylm.console import warn

    rows, where = load_docs(task, task.eval_split, task_data)
    docs = prepare_docs(task, rows, where)[:limit or None]
    pool, pool_where = None, where
    if num_fewshot and task.kind != "loglikelihood_rolling":
        if task.fewshot_split == task.eval_split:
            pool = prepare_docs(task, rows, where)
        else:
            pool_rows, pool_where = load_docs(task, task.fewshot_split, task_data)
            pool = prepare_docs(task, pool_rows, pool_where)
    built = build_docs(task, docs, pool, num_fewshot, fewshot_seed, where, pool_where)
    unknown = sum(tokenizer.count_unknown(c + x) for d in built for c, x in d.requests)
    if unknown:
        warn(f"{unknown:,} {tokenizer.unit}(s) of task {task.name} are not in the run's vocabulary and count as <unk>")
    start = time.perf_counter()
    scores = score_task(model, tokenizer, task, built, batch_size=batch_size, device=device, dtype=dtype,
                        show_progress=show_progress)
    metrics, chance = task_metrics(task, built, scores)
    headline = None if chance is None else ("acc_norm" if "acc_norm" in task.metrics else "acc")
    centered = None
    if chance is not None:
        value = next(m.value for m in metrics if m.name == headline)
        centered = (value - chance) / (1 - chance)
    data = str(Path(where).resolve()) if task_data else where  # a --task-data file, whatever the cwd
    return TaskResult(task.name, len(built), metrics, chance, centered, headline, num_fewshot, data,
                      rows_sha256(rows[:limit or None]), round(time.perf_counter() - start, 3))


def evaluate_tasks(run_dir: str | Path, cfg: Any, show_progress: bool = True) -> Report:
    """`tinylm eval RUN --tasks ...`: every task on the run's model; the report is appended to the
    run's evals.jsonl (one record) and returned."""
    from tinylm.console import console
    from tinylm.run import load, record_eval

    cfg.validate()
    names = task_names(cfg.tasks)
    run = load(run_dir, **cfg.load_options())
    results = []
    for name in names:
        if show_progress:  # where the rows come from: the --task-data file, else the Hub dataset
            local = local_file(TASKS[name], TASKS[name].eval_split, cfg.task_data) if cfg.task_data else None
            console.print(f"{name}: {local or TASKS[name].where}")
        results.append(run_task(run.model, run.tokenizer, TASKS[name], num_fewshot=cfg.num_fewshot,
                                limit=cfg.limit, fewshot_seed=cfg.fewshot_seed, task_data=cfg.task_data,
                                batch_size=cfg.batch_size, device=run.device, dtype=run.dtype,
                                show_progress=show_progress))
    report = Report(results, cfg.num_fewshot, cfg.limit, cfg.fewshot_seed)
    record_eval(run, {"data": "tasks", **report.to_dict()})
    return report
