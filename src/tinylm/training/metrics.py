"""metrics.jsonl (one JSON object per row) and the plots loss.png and perplexity.png.

Training rows carry `train_loss`, `lr`, `grad_norm` and `tokens_per_s`; evaluation rows carry
`val_loss` and `val_perplexity`. Every row has `step`, `tokens` and `elapsed` (seconds).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tinylm import fileio


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path

    def append(self, row: dict[str, Any]) -> None:
        with fileio.open_writer(self.path, "ab") as f:  # a full disk: a WriteError naming metrics.jsonl
            f.write((json.dumps(row) + "\n").encode("utf-8"))

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a crash mid-write
                continue
        return rows

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (a resumed run writes them again)."""
        kept = [r for r in self.rows() if r.get("step", 0) <= step]
        fileio.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def plot_metrics(rows: list[dict[str, Any]], out_dir: Path, title: str = "") -> None:
    """Write loss.png and perplexity.png (train and validation against step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    for name, transform, ylabel in (("loss.png", lambda v: v, "loss (nats/token)"),
                                    ("perplexity.png", lambda v: math.exp(min(v, 50.0)), "perplexity")):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        if train:
            ax.plot([s for s, _ in train], [transform(v) for _, v in train], label="train", lw=1.2)
        if val:
            ax.plot([s for s, _ in val], [transform(v) for _, v in val], "o-", label="validation", ms=3)
        if name == "perplexity.png":
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")  # 4, 6, 10 rather than 4x10^0
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} {ylabel.split(' ')[0]}".strip())
        ax.grid(alpha=0.3)
        if train or val:  # an empty plot (a run stopped at step 0) has nothing to label
            ax.legend()
        fig.tight_layout()
        tmp = fileio.temp_path(out_dir / name)
        try:
            with fileio.writing(out_dir / name, tmp):
                fig.savefig(tmp, format="png")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            plt.close(fig)
        fileio.commit(tmp, out_dir / name)
