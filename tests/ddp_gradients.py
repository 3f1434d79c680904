"""Helper for test_distributed.py (not a test module): the first global batch's gradients.

    python tests/ddp_gradients.py DATA_DIR OUT_FILE MICRO BATCH_TOKENS            (one process)
    torchrun --nproc_per_node=2 tests/ddp_gradients.py DATA_DIR OUT_FILE MICRO BATCH_TOKENS

builds the trainer exactly as `tinylm train` would (tiny-test preset, dropout off, CPU, float32),
runs one global batch forward and backward, and rank 0 saves the parameters' gradients.
"""

import sys
from pathlib import Path

import torch

from tinylm.config import load_preset
from tinylm.tokenizers import load_tokenizer
from tinylm.training import distributed
from tinylm.training.data import WindowData
from tinylm.training.launch import build_model
from tinylm.training.trainer import Trainer

data_dir, out_file, micro, batch_tokens = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = load_preset("tiny-test")
tokenizer = load_tokenizer(data_dir)
cfg.model.vocab_size = tokenizer.vocab_size
cfg.train.device, cfg.train.dtype = "cpu", "float32"
cfg.train.batch_size, cfg.train.batch_tokens = micro, batch_tokens
procs = distributed.from_environment()
model, weights = build_model(cfg)
trainer = Trainer(cfg, out_file.parent, model, WindowData(data_dir), tokenizer, weights, procs)
loss = trainer.backward()
if procs.main:
    torch.save({name: p.grad for name, p in trainer.model.named_parameters()}, out_file)
print(f"rank {procs.rank}/{procs.world_size}: {trainer.plan.micro} x {trainer.plan.accum} sequences, "
      f"loss {loss.item():.6f}", flush=True)
distributed.stop(together=True)
