"""Benchmarks by name (`tinylm eval --tasks`) against EleutherAI's lm-evaluation-harness 0.4.13 itself.

A tiny byte-level BPE model is trained on real Shakespeare and exported to Hugging Face format. Each
task's rows (tests/task_rows.py: the dataset's own schema, generated from the same real text) are
served by the fake Hub (tests/hub_fake.py) under the harness's own dataset ids, so both sides read the
same rows through `datasets`, the harness with its unchanged task YAMLs (tests/lm_eval_runner.py):

    tinylm eval RUN --tasks all            (subprocess, the fake Hub; then --download-to DIR)
    lm_eval hf on the export               (subprocess: HFLM)      ┐ the same rows, the harness's
    lm_eval local-completions on `tinylm serve RUN`  (subprocess)  ┘ metrics
    tinylm eval RUN --tasks all, HF_HUB_OFFLINE=1 (the Hub cache) and --task-data DIR (no network)

Accuracies must equal the harness's to 1e-6 and perplexities to 1e-4 relative, through both routes;
the request strings (zero- and three-shot) must be identical and every log-likelihood within 1e-4.
Every Hub client runs in a subprocess whose sitecustomize refuses connections off this machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import httpx
import lm_eval
import pytest
import torch

from hub_fake import GUARD, FakeHub
from task_rows import rows as task_rows
from task_rows import write_repos
from tinylm.cli import main
from tinylm.evaluation import tasks as T
from tinylm.evaluation.loglikelihood import encode_pair, rolling_requests, score_requests

TESTS = Path(__file__).resolve().parent
ACC_TOL, PPL_TOL = 1e-6, 1e-4
CLI_LOOP = """
import contextlib, io, json, sys
from tinylm.cli import main
out = []
for argv in ARGVS:
    err, so = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        code = main(argv)
    out.append([code, so.getvalue(), (err.getvalue().strip().splitlines() or [""])[-1]])
EXTRA
print(json.dumps(out))
"""
OFFLINE_ERROR = """
from tinylm.errors import DataError
from tinylm.evaluation import tasks as T
try:
    T.load_docs(T.Task("arc_easy", "nobody/missing", None, "multiple_choice", ("acc",), "", 1.0, "",
                       test_split="test"), "test")
except DataError as e:
    out.append([1, "", str(e)])
"""


def lm_eval_task_module(family: str, name: str):
    """A module of the installed harness's task folder (its utils.py / preprocess_*.py)."""
    path = Path(lm_eval.__file__).parent / "tasks" / family / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"lm_eval_{family}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rows(corpus_text: str) -> dict:
    return task_rows(corpus_text)


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """A tiny byte-level BPE model (context 128: some prompts fit, some are cut) trained on Hamlet."""
    from conftest import tiny_config
    from tinylm.training import train

    out = tmp_path_factory.mktemp("tasks") / "bpe"
    cfg = tiny_config(out, corpus_file, max_steps=120, eval_interval=120, threads=1)
    cfg.data.tokenizer, cfg.model.context = "bpe:512", 128
    train(cfg)
    return out


@pytest.fixture(scope="module")
def export(bpe_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tinylm.interop.hf import export_hf

    out = tmp_path_factory.mktemp("export") / "bpe"
    export_hf(bpe_run, out)
    return out


@pytest.fixture(scope="module")
def hub(rows: dict, tmp_path_factory: pytest.TempPathFactory):
    with FakeHub() as server:
        for repo, folder in write_repos(tmp_path_factory.mktemp("repos"), rows).items():
            server.add(repo, folder)
        yield server


@pytest.fixture(scope="module")
def env(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the Hub clients' subprocesses: the fake Hub, a fresh HF_HOME, one CPU thread."""
    guard = tmp_path_factory.mktemp("guard")
    (guard / "sitecustomize.py").write_text(GUARD)
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path_factory.mktemp("hf-home")), HF_HUB_DISABLE_TELEMETRY="1",
                OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", DISABLE_MULTIPROC="1",
                PYTHONPATH=os.pathsep.join([str(guard), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return base


def cli(env: dict[str, str], argvs: list[list[str]], extra: str = "") -> list[tuple[int, str, str]]:
    """Several `tinylm` commands in one subprocess: (exit status, stdout, last line of stderr) each."""
    code = CLI_LOOP.replace("ARGVS", repr(argvs)).replace("EXTRA", extra)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return [tuple(r) for r in json.loads(result.stdout.splitlines()[-1])]


@contextlib.contextmanager
def serving(run: Path, env: dict[str, str]):
    """`tinylm serve RUN` on a free loopback port; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "tinylm", "serve", str(run), "--port", "0", "--dtype", "float32"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()[-2000:]
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def results(bpe_run: Path, export: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Everything the parity tests compare, computed once: the harness's results (HF model, the server,
    the three-shot prompts), tinylm's through the Hub, its Hub cache offline and --task-data DIR."""
    tmp = tmp_path_factory.mktemp("results")
    task_data = tmp / "task-data"
    context = json.loads((bpe_run / "config.json").read_text())["model"]["context"]
    with serving(bpe_run, env) as url:
        spec = {"tasks": list(T.TASKS), "runs": [
            {"name": "hf", "model": "hf", "model_args": {"pretrained": str(export), "dtype": "float32"}},
            {"name": "api", "model": "local-completions",
             "model_args": {"model": "bpe", "base_url": f"{url}/v1/completions", "tokenizer": str(export),
                            "tokenizer_backend": "huggingface", "max_length": context + 2}},
            {"name": "fewshot", "model": None, "num_fewshot": 3,
             "tasks": [t for t in T.TASKS if t != "wikitext"]}]}
        (tmp / "spec.json").write_text(json.dumps(spec))
        harness = subprocess.Popen([sys.executable, str(TESTS / "lm_eval_runner.py"), str(tmp / "spec.json"),
                                    str(tmp / "harness.json")], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        online = cli(env, [["eval", str(bpe_run), "--tasks", "all", "--json", "--dtype", "float32"],
                           ["eval", "--tasks", "all", "--download-to", str(task_data)]],
                     extra=OFFLINE_ERROR.replace("nobody/missing", "tinylm/missing"))
        _, stderr = harness.communicate(timeout=600)
        assert harness.returncode == 0, stderr[-3000:]
        scored = score_prompt(url, context)
    offline = cli({**env, "HF_HUB_OFFLINE": "1"},
                  [["eval", str(bpe_run), "--tasks", "all", "--json", "--dtype", "float32"],
                   ["eval", str(bpe_run), "--tasks", "all", "--json", "--dtype", "float32", "--task-data",
                    str(task_data)]], extra=OFFLINE_ERROR)
    return {"harness": json.loads((tmp / "harness.json").read_text()), "online": online, "offline": offline,
            "task_data": task_data, "scored": scored}


def score_prompt(url: str, context: int) -> dict:
    """The server's log-probabilities of prompts of context + 1 and context + 2 token ids (echo + logprobs)."""
    ids = [random.Random(0).randrange(1, 500) for _ in range(context + 2)]
    out = {"ids": ids}
    with httpx.Client(base_url=url, timeout=60) as http:
        for n in (context + 1, context + 2):
            body = {"model": "bpe", "prompt": ids[-n:], "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
            out[n] = http.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["token_logprobs"]
    return out


def report(line: tuple[int, str, str]) -> dict:
    code, stdout, err = line
    assert code == 0, err
    return json.loads(stdout)


def values(rep: dict) -> dict[tuple[str, str], tuple[float, float | None, int]]:
    return {(r["task"], r["metric"]): (r["value"], r["stderr"], r["items"]) for r in rep["table"]}


# --------------------------------------------------------------------------- parity


@pytest.mark.slow
def test_metrics_equal_the_harness_through_tasks_and_local_completions(results: dict, rows: dict):
    ours = values(report(results["online"][0]))
    assert {task for task, _ in ours} == set(T.TASKS)
    for route in ("hf", "api"):
        theirs = results["harness"][route]
        for (task, metric), (value, stderr, items) in ours.items():
            expected = theirs[task]["metrics"][metric]
            assert items == len(rows[task][T.TASKS[task].eval_split])
            if "perplexity" in metric or metric == "bits_per_byte":
                assert value == pytest.approx(expected, rel=PPL_TOL), (route, task, metric)
            else:
                assert value == pytest.approx(expected, abs=ACC_TOL), (route, task, metric)
                assert stderr == pytest.approx(theirs[task]["metrics"][f"{metric}_stderr"], abs=ACC_TOL)
    # the accuracies are not degenerate: the model is above chance somewhere and below it elsewhere
    accs = [v for (_, m), (v, _, _) in ours.items() if m in ("acc", "acc_norm")]
    assert len(set(accs)) > 4


@pytest.mark.slow
def test_requests_and_loglikelihoods_equal_the_harness(results: dict, bpe_run: Path):
    """The same prompt strings (zero- and three-shot, the harness's sampling of examples) and the same
    log-likelihood for every request, within float32 rounding."""
    import tinylm

    run = tinylm.load(bpe_run, device="cpu", dtype="float32")
    harness = results["harness"]
    for name, task in T.TASKS.items():
        docs = T.prepare_docs(task, T.load_docs(task, task.eval_split, results["task_data"])[0], name)
        built = T.build_docs(task, docs, None)
        theirs = harness["hf"][name]
        assert [[list(r) for r in d.requests] for d in built] == [
            [r if task.kind != "loglikelihood_rolling" else ["", r[0]] for r in doc] for doc in theirs["requests"]]
        scores = T.score_task(run.model, run.tokenizer, task, built, batch_size=4)
        for ours, hf, api in zip(scores, theirs["loglikelihoods"], harness["api"][name]["loglikelihoods"], strict=True):
            mine = [ll for ll, _ in ours]
            assert mine == pytest.approx(hf, abs=1e-4) and mine == pytest.approx(api, abs=1e-4), name
        if task.kind != "loglikelihood_rolling":
            pool = T.prepare_docs(task, T.load_docs(task, task.fewshot_split, results["task_data"])[0], name)
            three = T.build_docs(task, docs, pool, num_fewshot=3)
            assert [[list(r) for r in d.requests] for d in three] == harness["fewshot"][name]["requests"], name


@pytest.mark.slow
def test_offline_from_the_hub_cache_and_from_task_data(results: dict):
    """HF_HUB_OFFLINE=1 reads what the first run left in the Hub cache, and --task-data DIR (written by
    --download-to) the same rows: the same report as from the Hub. A dataset that is not there is a
    one-line error naming the task, the dataset and how to supply it."""
    online = values(report(results["online"][0]))
    assert values(report(results["offline"][0])) == online
    assert values(report(results["offline"][1])) == online
    code, stdout, _ = results["online"][1]
    assert code == 0 and "--task-data" in stdout
    assert sorted(p.relative_to(results["task_data"]).as_posix() for p in results["task_data"].rglob("*.jsonl")) == \
        sorted(f"{t.name}/{s}.jsonl" for t in T.TASKS.values() for s in t.splits)
    missing_online, missing_offline = results["online"][2][2], results["offline"][2][2]
    assert "task arc_easy (tinylm/missing, test split): no such dataset on the Hub" in missing_online
    assert "task arc_easy (nobody/missing, test split) is not in the Hub cache and offline mode is on " \
        "(HF_HUB_OFFLINE=1)" in missing_offline
    assert "set HF_HUB_OFFLINE=1" in missing_online and "set HF_HUB_OFFLINE=1" not in missing_offline
    for message in (missing_online, missing_offline):
        assert "`tinylm eval --tasks arc_easy --download-to DIR`" in message and "--task-data DIR" in message
        assert "\n" not in message


@pytest.mark.slow
def test_the_server_scores_prompts_of_context_plus_one_tokens(results: dict, bpe_run: Path):
    """What local-completions sends with max_length = context + 2: context + 1 prompt tokens, all but the
    first scored from one forward pass; a longer prompt keeps its last context + 1."""
    import tinylm

    run = tinylm.load(bpe_run, device="cpu", dtype="float32")
    scored, context = results["scored"], run.model.cfg.context
    ids = scored["ids"][-(context + 1):]
    with torch.no_grad():
        logits, _ = run.model(torch.tensor([ids[:-1]]))
    expected = torch.log_softmax(logits[0].float(), -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    for n in (context + 1, context + 2):
        got = scored[n]
        assert len(got) == context + 2 and got[0] is None  # context + 1 prompt tokens, then the generated one
        assert got[1:-1] == pytest.approx(expected, abs=1e-4)


# --------------------------------------------------------------------------- the harness's definitions


def test_doc_functions_equal_the_harness_on_real_rows(shared_data: Path):
    """The first 1,000 HellaSwag validation items and the WikiText-2 validation articles (the real
    data): tinylm's prompts, choices and word counts are the harness's own functions' output."""
    import datasets

    from tinylm.evaluation.multiple_choice import read_items

    hs = lm_eval_task_module("hellaswag", "utils")
    records = [json.loads(line) for line in (shared_data / "hellaswag" / "hellaswag_val.jsonl").open()][:1000]
    theirs = hs.process_docs(datasets.Dataset.from_list(records)).to_list()
    ours = [T.hellaswag_doc(r) for r in records]
    assert [(d["query"], d["choices"], d["gold"]) for d in ours] == [(d["query"], d["choices"], d["gold"])
                                                                    for d in theirs]
    assert all(r["ctx"] != d["query"] for r, d in zip(records, ours))  # tinylm's old prompts differed on every one
    items = read_items(shared_data / "hellaswag" / "hellaswag_val.jsonl", "hellaswag")[:1000]
    assert [(i.context, [c[1:] for c in i.choices]) for i in items] == [(d["query"], d["choices"]) for d in theirs]

    wt = lm_eval_task_module("wikitext", "preprocess_wikitext")
    text = (shared_data / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8")
    pages = [p for p in text.split("\n = ") if p.strip()]
    assert len(pages) > 100
    task = T.TASKS["wikitext"]
    for page in pages:
        doc = {"page": " = " + page}
        assert task.target(doc) == wt.wikitext_detokenizer(doc)
        built = T.build_doc(task, doc, [])
        assert (built.words, built.bytes) == tuple(wt.process_results(doc, [-1.0])["word_perplexity"][1:] +
                                                   wt.process_results(doc, [-1.0])["byte_perplexity"][1:])


def test_winogrande_and_the_rolling_windows_are_the_harness_s(rows: dict):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    wg = lm_eval_task_module("winogrande", "preprocess_winogrande")
    task = T.TASKS["winogrande"]
    for doc in rows["winogrande"]["validation"]:
        assert (task.text(doc), task.choices(doc), task.target(doc)) == (
            wg.doc_to_text(doc), wg.doc_to_choice(doc), wg.doc_to_target(doc))
    for n, context in [(1, 4), (4, 4), (5, 4), (10, 4), (9, 3), (200, 128), (0, 8)]:
        tokens = list(range(1, n + 1))
        theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 0, context, 1)]
        assert rolling_requests(tokens, 0, context) == [tuple(w) for w in theirs]


def test_shared_contexts_and_batches_give_the_log_likelihoods_of_one_forward_per_request():
    """Choices of one context scored through the KV cache, many contexts per forward, cut requests
    alone: the log-likelihood and greedy flag of a full forward of each request (learned and rotary
    positions)."""
    from tinylm.config import load_preset
    from tinylm.model import GPT

    cfg = load_preset("tiny-test").model
    cfg.vocab_size = 50
    rnd = random.Random(0)
    requests = []
    for _ in range(30):
        ctx = [rnd.randrange(50) for _ in range(rnd.randrange(1, 40))]
        requests += [(ctx, [rnd.randrange(50) for _ in range(rnd.randrange(1, 12))]) for _ in range(rnd.choice([1, 2, 4]))]
    for pos in ("learned", "rope"):
        cfg.pos = pos
        torch.manual_seed(0)
        model = GPT(cfg).eval()
        got = score_requests(model, requests, batch_size=2)
        for (ctx, cont), s in zip(requests, got, strict=True):
            cont = cont[-cfg.context:]
            seq = (ctx + cont)[-(cfg.context + 1):]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([seq[:-1]]))[0][0].float(), -1)[-len(cont):]
            target = torch.tensor(cont)
            assert s.logprob == pytest.approx(float(lp.gather(1, target[:, None]).sum()), abs=1e-4)
            assert s.greedy == bool((lp.argmax(-1) == target).all()) and s.tokens == len(cont)


def test_encode_pair_is_the_harness_s_on_the_exported_tokenizer(bpe_run: Path, export: Path):
    """(context ids, continuation ids) as the harness's own `_encode_pair` makes them with the exported
    Hugging Face tokenizer (the context's trailing whitespace moves to the continuation, whose ids are
    the whole text's after the context's); an empty context is its prefix token (BOS = EOS here)."""
    from types import SimpleNamespace

    from lm_eval.api.model import TemplateLM
    from transformers import AutoTokenizer

    import tinylm

    hf = AutoTokenizer.from_pretrained(export)
    harness = SimpleNamespace(backend="causal", tok_encode=lambda text: hf.encode(text))
    tok = tinylm.load(bpe_run, device="cpu", dtype="float32").tokenizer
    pairs = [("To be, or not to be", " that is the question"), ("Answer: ", "Denmark"), ("Hamlet:\n", "\nWho's there?"),
             ("Question: Who is there?\nAnswer:", " Bernardo"), ("a  \t\n", " b")]
    for context, continuation in pairs:
        assert encode_pair(tok, context, continuation) == TemplateLM._encode_pair(harness, context, continuation)
    assert encode_pair(tok, "", "Elsinore") == ([hf.bos_token_id], hf.encode("Elsinore"))


# --------------------------------------------------------------------------- the command


def test_task_list_names_and_option_errors(trained_run: Path, tmp_path: Path, capsys):
    assert main(["eval", "--tasks", "list"]) == 0
    listing = capsys.readouterr().out
    for name, task in T.TASKS.items():
        assert name in listing and task.dataset in listing
    cases = [(["eval", str(trained_run), "--tasks", "hellaswag,arc_eazy"], "unknown task arc_eazy (did you mean arc_easy?)"),
             (["eval", str(trained_run), "--tasks", "piqa", "--num-fewshot", "-1"], "eval.num_fewshot must be >= 0"),
             (["eval", str(trained_run), "--tasks", "piqa", "--hellaswag"], "give --hellaswag in another"),
             (["eval", "--tasks", "piqa"], "give the RUN_DIR"),
             (["eval", str(trained_run), "--tasks", "piqa", "--task-data", str(tmp_path)],
              f"task piqa needs {tmp_path / 'piqa' / 'validation.jsonl'} (the validation split of baber/piqa"),
             (["eval", str(trained_run), "--num-fewshot", "2"], "--num-fewshot applies to --tasks")]
    for argv, fragment in cases:
        capsys.readouterr()
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and fragment in err, err


def test_task_data_rows_outside_the_schema_are_one_line_errors(trained_run: Path, tmp_path: Path, capsys, rows):
    (tmp_path / "arc_easy").mkdir()
    bad = [dict(r) for r in rows["arc_easy"]["test"]]
    bad[3]["answerKey"] = "Z"
    (tmp_path / "arc_easy" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    assert main(["eval", str(trained_run), "--tasks", "arc_easy", "--task-data", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "test.jsonl row 4 does not fit task arc_easy (ValueError" in err and "schema of allenai/ai2_arc (ARC-Easy)" in err


def test_a_report_and_its_record_in_evals_jsonl(trained_run: Path, tmp_path: Path, capsys, rows):
    """--task-data with a run of the char tokenizer: the printed table, the record appended to evals.jsonl,
    the CORE-style centered mean over the tasks with a chance baseline, --limit as the first N items."""
    for name in ("piqa", "winogrande", "arc_easy"):
        task = T.TASKS[name]
        for split in task.splits:
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[name][split]))
    argv = ["eval", str(trained_run), "--tasks", "piqa,winogrande,arc_easy", "--task-data", str(tmp_path),
            "--limit", "5", "--num-fewshot", "1", "--dtype", "float32"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| piqa | acc_norm |" in table and "centered mean (3 tasks)" in table and "1-shot, first 5 items" in table
    record = json.loads((trained_run / "evals.jsonl").read_text().splitlines()[-1])
    assert record["num_fewshot"] == 1 and record["limit"] == 5 and record["definitions"] == T.HARNESS
    results = record["tasks"]
    assert [r["items"] for r in results.values()] == [5, 5, 5]
    assert results["piqa"]["chance"] == 0.5 and results["winogrande"]["headline"] == "acc"
    arc = results["arc_easy"]
    sizes = [len(r["choices"]["text"]) for r in rows["arc_easy"]["test"][:5]]
    assert arc["chance"] == pytest.approx(sum(1 / n for n in sizes) / 5)
    acc_norm = next(m["value"] for m in arc["metrics"] if m["name"] == "acc_norm")
    assert arc["centered"] == pytest.approx((acc_norm - arc["chance"]) / (1 - arc["chance"]))
    assert record["centered_mean"] == pytest.approx(sum(r["centered"] for r in results.values()) / 3)
    assert arc["sha256"] == T.rows_sha256(rows["arc_easy"]["test"][:5])
    assert not math.isnan(record["centered_mean"])


def _write_task(root: Path, task: str, split: str, rows: list[dict]) -> Path:
    path = root / task / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_that_cannot_be_scored_are_one_line_errors_naming_file_row_and_fix(trained_run: Path, tmp_path: Path,
                                                                                capsys, rows):
    """What the harness scores silently or fails on (an empty WikiText page, a label outside the choices,
    an unlabeled test split written as validation, a LAMBADA text of one word) is refused."""
    hs = dict(rows["hellaswag"]["validation"][0])
    piqa = dict(rows["piqa"]["validation"][0])
    wg = dict(rows["winogrande"]["validation"][0])
    cases = [("wikitext", "test", [{"page": " = A = \n text \n"}, {"page": ""}],
              "row 2 (task wikitext): the page has no text to score"),
             ("hellaswag", "validation", [{**hs, "label": 7}],
              "row 1 (task hellaswag): its label 7 is not one of its 4 choices; give the index of the correct choice"),
             ("hellaswag", "validation", [{**hs, "label": ""}], "the test split of Rowan/hellaswag has no labels"),
             ("piqa", "validation", [piqa, {**piqa, "label": -1}],
              "row 2 (task piqa): its label -1 is not one of its 2 choices; the test split of baber/piqa has no "
              "labels: use the validation split"),
             ("winogrande", "validation", [{**wg, "answer": ""}], "the test split of allenai/winogrande has no labels"),
             ("lambada_openai", "test", [{"text": "Hello"}], "row 1 (task lambada_openai): the text 'Hello' has fewer "
              "than two words"),
             ("lambada_openai", "test", [{"text": "a b"}, {"text": ""}], "row 2 (task lambada_openai): the text ''")]
    for number, (task, split, bad, fragment) in enumerate(cases):
        root = tmp_path / str(number)
        path = _write_task(root, task, split, bad)
        assert main(["eval", str(trained_run), "--tasks", task, "--task-data", str(root)]) == 1, task
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: {path} row") and fragment in err, err


def test_a_few_shot_example_with_a_bad_label_names_its_own_file(trained_run: Path, tmp_path: Path, capsys, rows):
    _write_task(tmp_path, "piqa", "validation", rows["piqa"]["validation"])
    train = _write_task(tmp_path, "piqa", "train", [*rows["piqa"]["train"], {**rows["piqa"]["train"][0], "label": 5}])
    assert main(["eval", str(trained_run), "--tasks", "piqa", "--task-data", str(tmp_path), "--num-fewshot", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{train} row {len(rows['piqa']['train']) + 1} (task piqa): its label 5" in err, err


def test_report_footer_record_paths_and_progress_name_what_was_scored(trained_run: Path, tmp_path: Path, capsys,
                                                                      rows, monkeypatch):
    """--limit above the items says so; one task is "1 task"; a relative --task-data is recorded
    absolute; the progress line names the local file the rows come from."""
    _write_task(tmp_path / "td", "piqa", "validation", rows["piqa"]["validation"][:3])
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(trained_run), "--tasks", "piqa", "--task-data", "td", "--limit", "1000"]) == 0
    captured = capsys.readouterr()
    assert "all items (--limit 1,000 is more than any task has)" in captured.out, captured.out
    assert "centered mean (1 task)" in captured.out
    assert "piqa: td/piqa/validation.jsonl" in captured.err, captured.err
    record = json.loads((trained_run / "evals.jsonl").read_text().splitlines()[-1])
    assert record["tasks"]["piqa"]["data"] == str(tmp_path / "td" / "piqa" / "validation.jsonl")
    assert record["tasks"]["piqa"]["items"] == 3


def test_offline_errors_do_not_suggest_what_was_just_done(tmp_path: Path):
    """With HF_HUB_OFFLINE=1 already set, no advice to set it; a --download-to that fails offline says it
    needs the Hub, not to run --download-to."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    (code, _, err), (_, _, missing) = cli(env, [["eval", "--tasks", "piqa", "--download-to", str(tmp_path / "dl")]],
                                          extra=OFFLINE_ERROR)
    assert code == 1 and "offline mode is on (HF_HUB_OFFLINE=1)" in err, err
    assert "--download-to needs the Hub: unset HF_HUB_OFFLINE" in err and "`tinylm eval --tasks" not in err, err
    assert "`tinylm eval --tasks arc_easy --download-to DIR`" in missing and "--task-data DIR" in missing, missing
    assert "set HF_HUB_OFFLINE=1" not in missing and "\n" not in missing
