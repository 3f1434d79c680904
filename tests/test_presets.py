"""The reference presets end to end.

Each preset trains for a few steps at its full model size on a small stand-in of its dataset in
the real file format (TinyStories' `<|endoftext|>` text files, WikiText-103's raw articles,
FineWeb-Edu's Parquet shards, tinyshakespeare's input.txt from ../shared/data when present),
found through $TINYLM_DATA_DIR as a user's local copy would be; then samples and evaluates. Only
the batch, the step count and the evaluation sizes are shrunk. The full-size parameter count
`tinylm presets` prints must be within 2% of what the recipe states, and the README's table of
presets must match `tinylm presets`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from dataset_files import stories, wikitext_raw, write_parquet
from test_multiple_choice import ITEMS, write_jsonl
from tinylm.cli import main
from tinylm.config import DataConfig, ModelConfig, preset_names, preset_reference
from tinylm.data import load_split, read_meta, resolve_data_dir
from tinylm.cli.presets import COLUMNS, count_params, parse_count, recipe, table
from tinylm.run import load
from tinylm.tokenizers import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
REFERENCE = ["tinystories-word", "tinystories-gpt2", "fineweb-edu-16m", "wikitext103-51m", "shakespeare-char-tinygpt"]
SMALL_EVAL = ["train.eval_tokens=1024", "train.log_interval=1"]
# per preset: what the test shrinks (never the model), the prompt to sample from, and the dataset to
# evaluate on (None: the run's own validation split)
CASES = {
    "tinystories-word": (["train.eval_interval=3"], "<sos> spot spot saw the", "tinystories"),
    "tinystories-gpt2": (["train.batch_size=4", "train.grad_accum=2", "train.max_steps=4", "train.warmup_steps=2",
                          "train.eval_interval=2"], "Once upon a time", "tinystories"),
    "fineweb-edu-16m": (["train.batch_size=2", "train.batch_tokens=2048", "train.max_steps=4", "train.warmup_steps=2",
                         "train.eval_interval=2", "train.save_interval=3", "train.keep_last=2",
                         "train.hellaswag_items=3", "data.max_tokens=30000"], "The water cycle", None),
    "wikitext103-51m": (["train.batch_size=1", "train.grad_accum=2", "train.max_steps=2", "train.warmup_steps=1",
                         "train.eval_interval=2", "data.val_fraction=0.15"], " = Hamlet = \n", "wikitext103"),
    "shakespeare-char-tinygpt": (["train.max_steps=30", "train.eval_interval=15"], "ROMEO:", "tinyshakespeare"),
}


def _write_local_copy(name: str, root: Path, corpus_text: str, shared: Path) -> None:
    """The preset's dataset as a local copy in its real layout: root/<dataset>/<files>."""
    if name.startswith("tinystories"):
        folder = root / "tinystories"
        folder.mkdir(parents=True)
        for file, docs in (("TinyStoriesV2-GPT4-train.txt", stories(corpus_text, 60)),
                           ("TinyStoriesV2-GPT4-valid.txt", stories(corpus_text, 12, offset=60))):
            (folder / file).write_text("\n<|endoftext|>\n".join(docs) + "\n<|endoftext|>\n", encoding="utf-8")
    elif name.startswith("fineweb"):
        folder = root / "fineweb-edu"
        folder.mkdir(parents=True)
        write_parquet(folder / "000_00000.parquet", stories(corpus_text, 800), row_group=50)
    elif name.startswith("wikitext"):
        folder = root / "wikitext103"
        folder.mkdir(parents=True)
        paras = stories(corpus_text, 120)
        for split, first, n in (("train", 0, 30), ("valid", 90, 3), ("test", 100, 3)):
            articles = [(f"{split.title()} article {i}", paras[(first + i) * 3 % 120:][:3]) for i in range(n)]
            (folder / f"wiki.{split}.raw").write_text(wikitext_raw(articles), encoding="utf-8")
    else:
        folder = root / "tinyshakespeare"
        folder.mkdir(parents=True)
        real = shared / "tinyshakespeare" / "input.txt"
        (folder / "input.txt").write_bytes(real.read_bytes() if real.is_file() else corpus_text.encode())


def _printed_params(text: str) -> float:
    return float(re.search(r"([\d.]+)M parameters", text)[1]) * 1e6


@pytest.mark.slow
@pytest.mark.parametrize("name", REFERENCE)
def test_reference_preset_trains_samples_and_evaluates(name, tmp_path, monkeypatch, capsys, corpus_text):
    from conftest import SHARED_DATA

    overrides, prompt, dataset = CASES[name]
    _write_local_copy(name, tmp_path / "copy", corpus_text, SHARED_DATA)
    monkeypatch.setenv("TINYLM_DATA_DIR", str(tmp_path / "copy"))
    if name.startswith("fineweb"):
        overrides = [*overrides, f"train.hellaswag_file={write_jsonl(tmp_path / 'hellaswag.jsonl', ITEMS)}"]
    run = tmp_path / "run"

    # the full-size model's parameter count, as `tinylm presets NAME` prints it, against the recipe's
    assert main(["presets", name]) == 0
    listed = _printed_params(capsys.readouterr().out)
    stated = preset_reference(name).params
    if stated:
        assert abs(listed / parse_count(stated) - 1) <= 0.02, (name, listed, stated)

    sets = [arg for o in [*overrides, *SMALL_EVAL] for arg in ("--set", o)]
    assert main(["train", "--preset", name, "--out", str(run), *sets]) == 0
    out = capsys.readouterr().err  # the training summary and progress lines
    cfg = json.loads((run / "config.json").read_text())
    trained = _printed_params(out)
    assert trained == pytest.approx(count_params(ModelConfig(**cfg["model"])), abs=5e3)  # printed as 0.00M
    if cfg["data"]["tokenizer"] == "gpt2":  # a fixed vocabulary: the run has the full-size model
        assert trained == listed
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert vals and all(np.isfinite(vals)) and rows[-1]["step"] == cfg["train"]["max_steps"]
    assert (run / "model.safetensors").is_file() and (run / "loss.png").is_file() and (run / "perplexity.png").is_file()

    assert main(["sample", str(run), "--prompt", prompt, "--max-new-tokens", "12", "--seed", "0", "--top-k", "20"]) == 0
    sampled = capsys.readouterr().out
    assert sampled.startswith(prompt) and len(sampled) > len(prompt) + 1  # the prompt, its continuation, "\n"
    assert main(["eval", str(run), *(["--dataset", dataset] if dataset else []), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(result["loss"]) and result["perplexity"] == pytest.approx(np.exp(result["loss"]), rel=1e-4)
    assert 0 < result["bits_per_byte"] < 20
    _check_recipe_specifics(name, run, cfg, out, rows, capsys)


def _check_recipe_specifics(name: str, run: Path, cfg: dict, out: str, rows: list[dict], capsys) -> None:
    """What each recipe needs beyond training: the parts tinylm added for it."""
    data_dir, _ = resolve_data_dir(DataConfig(**cfg["data"]))  # the prepared copy in the cache
    if name == "tinystories-word":
        tok = load_tokenizer(run)
        train = load_split(data_dir, "train")
        assert (train[0], tok.encode("<sos> spot")[0]) == (tok.bos_id, tok.bos_id)  # documents open with <sos>
        assert int((train == tok.bos_id).sum()) == int((train == tok.eot_id).sum()) == 60
        assert cfg["train"]["max_steps"] == -(-3 * len(train) // (16 * 2 * 64))  # 3 epochs of 16 x 2 x 64 tokens
        assert main(["sample", str(run), "--prompt", "<sos> spot spot saw the", "--beams", "3",
                     "--max-new-tokens", "8"]) == 0
        assert capsys.readouterr().out.startswith("<sos> spot spot saw the")
        lm = load(run)
        done = lm.complete("<sos> spot spot saw the", max_new_tokens=10, seed=1, temperature=1.0)[0]
        new = [t for t in done.ids if t not in tok.markers]
        assert tok.decode(done.prompt_ids) + done.text == tok.decode(done.prompt_ids + new)  # spaced as one text
        assert "".join(lm.stream("<sos> spot spot saw the", max_new_tokens=10, seed=1, temperature=1.0)) == done.text
    elif name == "fineweb-edu-16m":
        assert "2,048 tokens/step (2 x 2 sequences)" in out  # 512-token windows in a model of context 1024
        assert cfg["model"]["context"] == 1024 and cfg["model"]["vocab_size"] == 50304
        assert any("hellaswag_acc" in r for r in rows)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000003", "step-0000004"]
        splits = read_meta(data_dir)["splits"]
        assert splits["train"]["tokens"] == 30000 and splits["val"]["tokens"] == 10000  # 3:1, as 300M:100M
    elif name == "wikitext103-51m":
        meta = read_meta(data_dir)
        assert list(meta["splits"]) == ["train", "val"]  # the training articles, shuffled and split
        val_text = load_tokenizer(data_dir).decode(load_split(data_dir, "val").tolist())
        assert "Train article" in val_text and "Valid article" not in val_text
        assert "bfloat16" in out


def test_presets_command_lists_every_preset_with_its_size_and_result(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in preset_names():
        r = recipe(name)
        assert f"{name}: {r.params / 1e6:.2f}M parameters" in out
        assert r.result.split()[0] in out if r.result else True
    assert set(REFERENCE) <= set(preset_names())
    assert main(["presets", "fineweb-edu-16m"]) == 0
    detail = capsys.readouterr().out
    assert "train.seq_len = 512" in detail and "data.max_tokens = 300000000" in detail


def test_readme_table_of_presets_matches_the_presets_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- presets table -->")[1].split("<!-- /presets table -->")[0]
    lines = [line for line in block.strip().splitlines() if line.startswith("|")]
    header, rows = lines[0], lines[2:]
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    parsed = [(first.strip("`"), *rest) for first, *rest in cells]
    assert parsed == table(), "README's table of presets is stale: regenerate it from `tinylm presets`"
