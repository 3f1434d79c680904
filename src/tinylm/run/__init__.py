"""The run directory: its layout and files (layout.py), weights formats (weights.py), loading a run for
generation and evaluation (run.py: `load`, `Run`) and merging a LoRA run into a standalone one (merge.py)."""

from tinylm.run.layout import (
                               ADAPTER_FILE,
                               BEST_ADAPTER_FILE,
                               BEST_FILE,
                               CHECKPOINTS_DIR,
                               CONFIG_FILE,
                               EVALS_FILE,
                               METRICS_FILE,
                               MODEL_FILE,
                               RUN_FILES,
                               STATE_FILE,
                               base_weights,
                               is_run_dir,
                               read_config,
                               write_config,
)
from tinylm.run.run import Adapter, Completion, Run, load, record_eval
from tinylm.run.weights import (
                               FULL,
                               AdapterWeights,
                               WeightsFormat,
                               load_weights,
                               read_weights,
                               save_weights,
                               weights_format,
                               weights_state,
)

__all__ = ["ADAPTER_FILE", "BEST_ADAPTER_FILE", "BEST_FILE", "CHECKPOINTS_DIR", "CONFIG_FILE", "EVALS_FILE",
           "FULL", "METRICS_FILE", "MODEL_FILE", "RUN_FILES", "STATE_FILE", "Adapter", "AdapterWeights", "Completion",
           "Run", "WeightsFormat", "base_weights", "is_run_dir", "load", "load_weights", "read_config",
           "read_weights", "record_eval", "save_weights", "weights_format", "weights_state", "write_config"]
