"""lm-evaluation-harness itself on the benchmarks, for the parity tests; run in a subprocess pointed at the
fake Hub (HF_ENDPOINT), so the harness reads the rows with its own unchanged task definitions:

    python lm_eval_runner.py SPEC.json OUT.json

SPEC: {"tasks": [...], "runs": [{"name", "model": "hf" | "local-completions" | null, "model_args": {...},
       "num_fewshot": K, "tasks": [...] (optional, default all)}]}
OUT:  {run name: {task: {"metrics": {metric: value, metric + "_stderr": value}, "requests": [[context,
       continuation], ...] per doc, "loglikelihoods": [ll, ...] per doc}}}

A run without a model only builds the requests (the harness's prompts, few-shot examples included), as
`simple_evaluate` does before scoring: num_fewshot set, the few-shot seed 1234, `build_all_requests`.

The task YAMLs are the installed harness's own (lm_eval/tasks/<family>/), indexed from a copy of just
those folders: indexing all of the harness's 14,000 tasks takes half a minute.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

FAMILIES = ("hellaswag", "arc", "piqa", "winogrande", "lambada", "openbookqa", "sciq", "wikitext")


def task_manager(tmp: Path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    source = Path(lm_eval.__file__).parent / "tasks"
    for family in FAMILIES:
        shutil.copytree(source / family, tmp / family, ignore=shutil.ignore_patterns("__pycache__"))
    return TaskManager(include_path=str(tmp), include_defaults=False)


def requests_only(manager, names: list[str], num_fewshot: int) -> dict:
    from lm_eval.tasks import get_task_dict

    out = {}
    for name, task in get_task_dict(names, manager).items():
        task.set_config(key="num_fewshot", value=num_fewshot)
        task.set_fewshot_seed(seed=1234)
        task.build_all_requests(rank=0, world_size=1)
        docs: dict[int, list] = {}
        for instance in task.instances:
            docs.setdefault(instance.doc_id, []).append((instance.idx, list(instance.args)))
        out[name] = {"requests": [[args for _, args in sorted(docs[d])] for d in sorted(docs)]}
    return out


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    from lm_eval import simple_evaluate

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        manager = task_manager(Path(tmp))
        for run in spec["runs"]:
            names = run.get("tasks", spec["tasks"])
            if run["model"] is None:
                out[run["name"]] = requests_only(manager, names, run.get("num_fewshot", 0))
                continue
            results = simple_evaluate(model=run["model"], model_args=run["model_args"], tasks=names,
                                      num_fewshot=run.get("num_fewshot", 0), task_manager=manager,
                                      log_samples=True, bootstrap_iters=100, device="cpu",
                                      batch_size=run.get("batch_size", 8))
            tasks = {}
            for name in names:
                metrics = {key.split(",")[0]: value for key, value in results["results"][name].items()
                           if "," in key and isinstance(value, (int, float))}
                samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
                requests = [[list(args) for args in s["arguments"]] for s in samples]
                # resps: per request a list of one response, (loglikelihood, greedy) or a rolling loglikelihood
                lls = [[r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in s["resps"]] for s in samples]
                tasks[name] = {"metrics": metrics, "requests": requests, "loglikelihoods": lls}
            out[run["name"]] = tasks
    Path(sys.argv[2]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
