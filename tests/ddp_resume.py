"""Helper for test_distributed.py (not a test module): resume one run many times in a row.

    torchrun --nproc_per_node=2 tests/ddp_resume.py RUN_DIR RESUMES STEPS

resumes RUN_DIR (a run with a checkpoint) RESUMES times, each time for STEPS more steps, exactly as
`tinylm train --resume RUN_DIR --max-steps N` does (the CLI's main in this process, so the process group
is joined and left once per resume). Every resume's first moments are where the processes race for
the run directory (rank 0 repairs the checkpoint and rewrites metrics.jsonl and config.json while the
other processes load it). Prints one line per resume with its exit status.
"""

import sys
from pathlib import Path

from tinylm.cli import main
from tinylm.rundir import read_config

run_dir, resumes, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
start = read_config(run_dir).train.max_steps
for i in range(1, resumes + 1):
    status = main(["train", "--resume", str(run_dir), "--max-steps", str(start + i * steps)])
    print(f"resume {i}: exit {status}", flush=True)
    if status != 0:
        sys.exit(status)
