"""Rows in the schemas of the benchmarks' Hub datasets (as `datasets` gives them), generated from real
text (the bundled Shakespeare corpus), and the fake Hub repositories that serve them.

Each task gets a few rows per split with the features its lm-evaluation-harness definition handles:
HellaSwag's WikiHow markup ([header], [title], [step]), empty and lower-case ctx_b and string labels;
ARC's numeric answer keys and 3- and 5-choice questions; OpenBookQA's answer key with a leading
space; SciQ's empty and indented supports; WinoGrande's blank; LAMBADA's last word; WikiText's
tokenized layout (" @-@ ", " , ", " = = Section = = "). Labels are the true continuations of the
lines, so a model trained on the corpus scores above chance.

    rows(text)                 {task: {split: [row dicts]}}
    write_repos(root, rows)    {Hub repository id: folder} with README.md configs and Parquet files
"""

from __future__ import annotations

import random
import re
from pathlib import Path

EVAL_ROWS, TRAIN_ROWS = 12, 12

# the repositories and configurations lm-evaluation-harness 0.4.13 reads (dataset_path, dataset_name)
REPOS = {"hellaswag": ("Rowan/hellaswag", "default"), "arc_easy": ("allenai/ai2_arc", "ARC-Easy"),
         "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge"), "piqa": ("baber/piqa", "default"),
         "winogrande": ("allenai/winogrande", "winogrande_xl"),
         "lambada_openai": ("EleutherAI/lambada_openai", "default"), "openbookqa": ("allenai/openbookqa", "main"),
         "sciq": ("allenai/sciq", "default"),
         "wikitext": ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1")}
SPLITS = {"hellaswag": ("train", "validation"), "piqa": ("train", "validation"),
          "winogrande": ("train", "validation"), "lambada_openai": ("test",)}


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if len(line.split()) >= 7]


class Gen:
    def __init__(self, text: str, seed: int) -> None:
        self.lines = lines(text)
        self.rnd = random.Random(seed)
        self.k = 0

    def line(self) -> str:
        self.k += 1
        return self.lines[(self.k * 7) % len(self.lines)]

    def other(self, avoid: str) -> str:
        while True:
            line = self.rnd.choice(self.lines)
            if line != avoid:
                return line

    def halves(self, line: str) -> tuple[str, str]:
        words = line.split()
        cut = max(2, len(words) // 2)
        return " ".join(words[:cut]), " ".join(words[cut:])


def hellaswag(g: Gen, n: int, split: str) -> list[dict]:
    out = []
    for i in range(n):
        line = g.line()
        head, tail = g.halves(line)
        words = tail.split()
        ctx_b, ending = " ".join(words[:2]).lower(), " ".join(words[2:]) or "and so."
        endings = [ending] + [g.halves(g.other(line))[1] for _ in range(3)]
        gold = i % 4
        endings[0], endings[gold] = endings[gold], endings[0]
        if i % 3 == 0:  # WikiHow markup, as in about half of HellaSwag
            label, ctx_a = "Education and Communications", f"[header] How to read a play [title] Read aloud. [step] {head}"
            endings = [e + " [substeps] Repeat it." if j != gold else e for j, e in enumerate(endings)]
        else:
            label, ctx_a = "Theatre", head
        if i % 5 == 4:
            ctx_b = ""  # the whole context in ctx_a
        out.append({"ind": 100 * (split == "train") + i, "activity_label": label, "ctx_a": ctx_a, "ctx_b": ctx_b,
                    "ctx": (ctx_a + " " + ctx_b).strip(), "endings": endings, "source_id": f"shakespeare~{i}",
                    "split": split, "split_type": "indomain" if i % 2 else "zeroshot", "label": str(gold)})
    return out


def _options(g: Gen, line: str, n: int, gold: int) -> list[str]:
    last = line.split()[-3:]
    options = [" ".join(g.other(line).split()[-3:]) for _ in range(n)]
    options[gold] = " ".join(last)
    return options


def arc(g: Gen, n: int, prefix: str) -> list[dict]:
    out = []
    for i in range(n):
        line = g.line()
        size = 3 if i == 5 else 5 if i == 7 else 4
        gold = (i * 3) % size
        labels = [str(j + 1) for j in range(size)] if i % 4 == 3 else list("ABCDE"[:size])
        question = f"How does this line end: \"{' '.join(line.split()[:-3])} ...\"?"
        out.append({"id": f"{prefix}_{i}", "question": question,
                    "choices": {"text": _options(g, line, size, gold), "label": labels}, "answerKey": labels[gold]})
    return out


def piqa(g: Gen, n: int) -> list[dict]:
    out = []
    for i in range(n):
        line = g.line()
        head, tail = g.halves(line)
        sols = [tail, g.halves(g.other(line))[1]]
        if i % 2:
            sols.reverse()
        out.append({"goal": head, "sol1": sols[0], "sol2": sols[1], "label": i % 2})
    return out


def winogrande(g: Gen, n: int) -> list[dict]:
    out = []
    for i in range(n):
        line = g.line()
        words = line.split()
        k = len(words) // 2
        wrong = g.other(line).split()[0]
        options = [words[k], wrong] if i % 2 == 0 else [wrong, words[k]]
        sentence = " ".join(words[:k] + ["_"] + words[k + 1:])
        out.append({"sentence": sentence, "option1": options[0], "option2": options[1], "answer": "12"[i % 2]})
    return out


def lambada(g: Gen, n: int) -> list[dict]:
    return [{"text": " ".join(re.sub(r"[^\w\s']", "", g.line()) for _ in range(3))} for _ in range(n)]


def openbookqa(g: Gen, n: int) -> list[dict]:
    out = []
    for i in range(n):
        line = g.line()
        gold = i % 4
        key = " ABCD"[gold + 1]
        out.append({"id": f"obqa-{i}", "question_stem": " ".join(line.split()[:-3]),
                    "choices": {"text": _options(g, line, 4, gold), "label": list("ABCD")},
                    "answerKey": (" " if i == 2 else "") + key})
    return out


def sciq(g: Gen, n: int) -> list[dict]:
    out = []
    for i in range(n):
        line = g.line()
        options = _options(g, line, 4, 3)
        support = "" if i % 4 == 1 else ("\n  " if i % 4 == 2 else "") + g.other(line) + " " + g.other(line)
        out.append({"question": " ".join(line.split()[:-3]) + "?", "distractor3": options[2],
                    "distractor1": options[0], "distractor2": options[1], "correct_answer": options[3],
                    "support": support})
    return out


def _wiki(paragraph: str) -> str:
    """Text in WikiText's tokenized layout: punctuation spaced out, hyphens and number commas as @-@ / @,@."""
    text = paragraph.replace("\n", " ")
    text = re.sub(r"(\w)-(\w)", r"\1 @-@ \2", text)
    text = re.sub(r"([,.;:!?])", r" \1", text)
    text = text.replace("'s ", " 's ")
    return re.sub(r"\s+", " ", text).strip()


def wikitext(g: Gen, n: int, text: str, offset: int) -> list[dict]:
    paragraphs = [p for p in text.split("\n\n") if len(p) > 200]
    pages = []
    for i in range(n):
        paras = [paragraphs[(offset + 3 * i + j) % len(paragraphs)] for j in range(3)]
        title = " ".join(paras[0].split()[:2]).strip(".,:;")
        body = [f" = {title} = \n", " \n", f" {_wiki(paras[0])} \n", " \n", " = = Section 1 = = \n", " \n",
                f" {_wiki(paras[1])} \"{' '.join(paras[2].split()[:6])}\" ( 1 @,@ 600 ) \n", " \n"]
        pages.append({"page": "".join(body)})
    return pages


def _split_rows(task: str, g: Gen, n: int, split: str, j: int, text: str) -> list[dict]:
    if task == "hellaswag":
        return hellaswag(g, n, split)
    if task in ("arc_easy", "arc_challenge"):
        return arc(g, n, "Mercury" if task == "arc_easy" else "MCAS")
    if task == "wikitext":
        return wikitext(g, 3 if split != "train" else 4, text, 20 * j)
    return {"piqa": piqa, "winogrande": winogrande, "lambada_openai": lambada, "openbookqa": openbookqa,
            "sciq": sciq}[task](g, n)


def rows(text: str) -> dict[str, dict[str, list[dict]]]:
    out: dict[str, dict[str, list[dict]]] = {}
    for task in REPOS:
        g = Gen(text, seed=len(task))
        out[task] = {}
        for j, split in enumerate(SPLITS.get(task, ("train", "validation", "test"))):
            g.k = 1000 * j  # each split its own lines
            out[task][split] = _split_rows(task, g, TRAIN_ROWS if split == "train" else EVAL_ROWS, split, j, text)
    return out


def write_repos(root: Path, task_rows: dict[str, dict[str, list[dict]]]) -> dict[str, Path]:
    """One folder per Hub repository: data/<config>/<split>-00000-of-00001.parquet and a README.md whose
    YAML names the configurations and splits (as the Hub's Parquet datasets do)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    configs: dict[str, list[tuple[str, list[str]]]] = {}
    for task, splits in task_rows.items():
        repo, config = REPOS[task]
        folder = root / repo.replace("/", "__")
        for split, records in splits.items():
            path = folder / config / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(records), path)
        configs.setdefault(repo, []).append((config, list(splits)))
    out = {}
    for repo, entries in configs.items():
        folder = root / repo.replace("/", "__")
        yaml = ["---", "configs:"]
        for config, splits in entries:
            yaml += [f"- config_name: {config}", "  data_files:"]
            for split in splits:
                yaml += [f"  - split: {split}", f"    path: {config}/{split}-00000-of-00001.parquet"]
        (folder / "README.md").write_text("\n".join(yaml + ["---", f"# {repo} (tinylm's test rows)", ""]))
        out[repo] = folder
    return out
