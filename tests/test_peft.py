"""PEFT parity: a tinylm LoRA run exported with --format peft, loaded by PEFT itself onto the base exported
with --format hf, gives tinylm's logits; the merged export and the exported chat template agree too."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import tinylm  # noqa: E402
from test_interop import random_run  # noqa: E402
from tinylm.chat.encode import encode_messages  # noqa: E402
from tinylm.cli import main  # noqa: E402
from tinylm.interop.hf import export_hf  # noqa: E402
from tinylm.interop.peft import export_peft  # noqa: E402
from tinylm.training import train  # noqa: E402
from tinylm.training.finetune import finetune_config  # noqa: E402

pytestmark = pytest.mark.slow
ALL = "qkv,proj,fc,mlp_proj,head"
FAMILIES = {
    "gpt2": {},
    "llama": {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "bias": False, "tie_weights": False},
}


def adapter_run(tmp_path: Path, base: Path, targets: str) -> Path:
    """A real LoRA fine-tune of `base` for a few steps at a high learning rate (B far from zero)."""
    records = [{"messages": [{"role": "user", "content": f"Count to {n}."},
                             {"role": "assistant", "content": " ".join(str(i) for i in range(1, n + 1))}]}
               for n in range(1, 13)]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    cfg = finetune_config(base, str(data))
    cfg.train.out_dir = str(tmp_path / "adapter")
    for key, value in {"epochs": 0.0, "max_steps": 3, "eval_interval": 3, "lr": 0.05, "min_lr": 0.05,
                       "warmup_steps": 0, "batch_size": 4, "dtype": "float32"}.items():
        setattr(cfg.train, key, value)
    cfg.lora.targets, cfg.lora.r, cfg.lora.alpha = targets, 4, 8.0
    return train(cfg).run_dir


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_loads_the_exported_adapter_with_tinylms_logits(tmp_path, family):
    base = random_run(tmp_path, std=0.2, **FAMILIES[family])
    run_dir = adapter_run(tmp_path, base, ALL)
    export_hf(base, tmp_path / "base_hf")
    summary = export_peft(run_dir, tmp_path / "peft")
    assert summary["family"] == family
    adapter_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base_hf"), dtype=torch.float32)
        model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft")).eval()
    assert not [w for w in caught if "missing" in str(w.message).lower()], [str(w.message) for w in caught]
    ours = tinylm.load(run_dir, device="cpu", dtype="float32")
    ids = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ours.model(ids)[0]
        got = model(input_ids=ids).logits
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
    assert (base_logits - expected).abs().max() > 1e-2  # the adapter changes the output
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    # the merged export: the same logits with transformers alone, and the chat template
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(tmp_path / "merged_hf")]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged_hf"), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "merged_hf"))
    chat = [{"role": "user", "content": "Count to 3."}]
    hf_ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    hf_ids = hf_ids["input_ids"] if hasattr(hf_ids, "keys") else hf_ids
    assert hf_ids == encode_messages(ours.tokenizer, ours.chat_template, chat, add_generation_prompt=True)[0]


def test_peft_export_refuses_runs_it_cannot_express(tmp_path, capsys):
    base = random_run(tmp_path)
    assert main(["export", str(base), "--format", "peft", "--out", str(tmp_path / "x")]) == 1
    assert "not a LoRA adapter run" in capsys.readouterr().err
