"""Moving models between tinylm run directories and other ecosystems (Hugging Face transformers).

    export_hf(run_dir, out_dir)      a run -> a transformers model directory (GPT-2 or Llama family)
    import_hf(src_dir, out_run_dir)  a transformers GPT-2 directory -> a tinylm run directory

Torch and safetensors are imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_hf", "import_hf"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tinylm.interop import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'tinylm.interop' has no attribute {name!r}")
