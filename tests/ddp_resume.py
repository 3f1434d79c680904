"""Helper for test_distributed.py (not a test module): resume one run many times in a row.

    torchrun --nproc_per_node=2 tests/ddp_resume.py RUN_DIR RESUMES STEPS

resumes RUN_DIR (a run with a checkpoint) RESUMES times, each time for STEPS more steps, exactly as
`tinylm train --resume RUN_DIR --max-steps N` does (the CLI's main, in this process: each resume joins and
leaves its own process group). The start of every resume is where the processes could race for the run
directory (rank 0 completes the checkpoint and rewrites metrics.jsonl and config.json while the others
load it). Every file this process creates, writes, renames or removes under RUN_DIR or $TINYLM_CACHE is
recorded (Python's audit events, which every such call in tinylm raises) and printed at the end as one
line: `rank R changed: [...]`, after one line per resume with its exit status.
"""

import json
import os
import sys
from pathlib import Path

from tinylm.cli import main
from tinylm.run import read_config
from tinylm.training.distributed import from_environment

run_dir, resumes, steps = Path(sys.argv[1]).resolve(), int(sys.argv[2]), int(sys.argv[3])
watched = (str(run_dir), os.path.realpath(os.environ["TINYLM_CACHE"]))
changed: list[str] = []
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate", "os.link", "os.symlink"}


def audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITES)
        paths = [path] if writes else []
    elif event in EVENTS:
        paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
    else:
        return
    for p in paths:
        if isinstance(p, int):
            continue
        full = os.path.realpath(os.fsdecode(p))
        if full.startswith(watched):
            changed.append(f"{event} {full}")


sys.addaudithook(audit)
start = read_config(run_dir).train.max_steps
for i in range(1, resumes + 1):
    status = main(["train", "--resume", str(run_dir), "--max-steps", str(start + i * steps)])
    print(f"resume {i}: exit {status}", flush=True)
    if status != 0:
        sys.exit(status)
print(f"rank {from_environment().rank} changed: {json.dumps(sorted(set(changed)))}", flush=True)
