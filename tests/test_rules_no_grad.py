"""Nothing builds an autograd graph where nothing is trained (issue 27, item 8): evaluation
(multiple choice, cloze, perplexity), generation (sampling, streaming, beams, chat), the server,
export, and the validation and HellaSwag passes of training.

The probe is PyTorch's own instrumentation, no stand-in: a global module forward hook (it fires in
every thread, the server's engine thread too) records every forward of a module in eval mode that
ran with grad mode on or returned a tensor that requires grad, and a saved-tensors hook counts the
tensors autograd saves for a backward pass in the calling thread (there are none without a graph)."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import tinylm
from tinylm.cli import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class Probe:
    def __init__(self) -> None:
        self.graphs: list[str] = []  # eval-mode modules whose forward was recorded by autograd
        self.saved = 0  # tensors saved for backward (this thread)
        self.warnings: list[str] = []

    def _forward(self, module: torch.nn.Module, args, output) -> None:
        if module.training:  # a training step builds its graph on purpose
            return
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        if torch.is_grad_enabled() or any(isinstance(o, torch.Tensor) and o.requires_grad for o in outputs):
            self.graphs.append(type(module).__name__)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.saved += 1
        return tensor

    @contextlib.contextmanager
    def watching(self):
        handle = torch.nn.modules.module.register_module_forward_hook(self._forward)
        try:
            with warnings.catch_warnings(record=True) as caught, \
                    torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                warnings.simplefilter("always")
                yield self
        finally:
            handle.remove()
        self.warnings = [str(w.message) for w in caught if "requires_grad" in str(w.message)]

    def assert_no_graph(self, *, saved: bool = True) -> None:
        assert not self.graphs, f"autograd recorded forwards of {sorted(set(self.graphs))}"
        assert not saved or self.saved == 0, f"{self.saved} tensors were saved for a backward pass"
        assert not self.warnings, self.warnings


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


CHOICES = [{"context": "HAMLET:\nTo be, or not to", "choices": [" be", " qzx"], "label": 0},
           {"context": "KING:\nGood", "choices": [" night", " xxq", " day"], "label": 2}]
HELLASWAG = [{"ctx": "Enter the ghost. Hamlet", "endings": ["speaks to it.", "zzq.", "and so.", "q"], "label": 0},
             {"ctx": "KING. Good Hamlet,", "endings": ["cast off.", "x", "y y", "ghost"], "label": 1}]


def test_the_probe_sees_a_forward_that_builds_a_graph(trained_run):
    run = tinylm.load(trained_run, dtype="float32")  # eval mode, parameters that require grad
    probe = Probe()
    with probe.watching():
        logits, _ = run.model(torch.tensor([[1, 2, 3]]))
        float(logits[0, 0, 0])
    assert probe.graphs and probe.saved > 0 and probe.warnings  # what every test below asserts is absent
    with pytest.raises(AssertionError):
        probe.assert_no_graph()


def test_eval_choices_and_cloze_build_no_graph(tmp_path, trained_run, capsys):
    """The report: `tinylm eval R --choices f.jsonl` printed PyTorch's requires_grad warning."""
    choices = _jsonl(tmp_path / "f.jsonl", CHOICES)
    cloze = _jsonl(tmp_path / "c.jsonl", [{"context": "HAMLET:\nTo be, or not to", "continuation": " be"}])
    hellaswag = _jsonl(tmp_path / "h.jsonl", HELLASWAG)
    probe = Probe()
    with probe.watching():
        assert main(["eval", str(trained_run), "--choices", str(choices), "--json"]) == 0
        assert main(["eval", str(trained_run), "--cloze", str(cloze), "--json"]) == 0
        assert main(["eval", str(trained_run), "--hellaswag", str(hellaswag), "--json"]) == 0
    probe.assert_no_graph()
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["items"] for r in results] == [2, 1, 2]


def test_eval_perplexity_builds_no_graph(tmp_path, trained_run, corpus_text):
    text = tmp_path / "t.txt"
    text.write_text(corpus_text[:3000], encoding="utf-8")
    probe = Probe()
    with probe.watching():
        assert main(["eval", str(trained_run), "--text", str(text), "--json"]) == 0
        assert main(["eval", str(trained_run), "--json"]) == 0
    probe.assert_no_graph()


def test_generation_and_sample_build_no_graph(trained_run, capsys):
    run = tinylm.load(trained_run, dtype="float32")
    probe = Probe()
    with probe.watching():
        assert len(run.generate(["HAMLET:", "KING:"], max_new_tokens=5, seed=1)) == 2
        assert "".join(run.stream("HAMLET:", max_new_tokens=5, seed=1))
        run.generate("HAMLET:", max_new_tokens=4, beams=2)
        run.generate("HAMLET:", max_new_tokens=4, use_cache=False)
        run.chat([{"role": "user", "content": "Who is there?"}], template="plain", max_new_tokens=4)
        assert main(["sample", str(trained_run), "--prompt", "HAMLET:", "--max-new-tokens", "5", "--num-samples",
                     "2", "--seed", "3"]) == 0
    probe.assert_no_graph()
    assert capsys.readouterr().out.count("HAMLET:") == 2


def test_export_builds_no_graph(tmp_path, trained_run):
    from tinylm.interop import export_hf

    probe = Probe()
    with probe.watching():
        export_hf(trained_run, tmp_path / "hf")
    probe.assert_no_graph()


@pytest.mark.slow
def test_the_server_builds_no_graph(trained_run):
    from serving_server import running
    from tinylm.serving import create_app

    probe = Probe()
    with probe.watching(), running(create_app(trained_run, chat_template="plain", dtype="float32")) as url:
        for path, body in (("/v1/completions", {"prompt": ["HAMLET:", "KING:"], "n": 2, "max_tokens": 4}),
                           ("/v1/completions", {"prompt": "HAMLET:", "max_tokens": 3, "echo": True, "logprobs": 2}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                                                     "logprobs": True, "top_logprobs": 2})):
            r = httpx.post(url + path, json={"model": trained_run.name, **body}, timeout=120)
            assert r.status_code == 200, r.text
    probe.assert_no_graph(saved=False)  # the engine's thread: the forward hook sees it, the saved-tensors hook not


def test_training_validation_and_hellaswag_passes_build_no_graph(tmp_path, corpus_file):
    from conftest import tiny_config
    from tinylm.training import train

    cfg = tiny_config(tmp_path / "run", corpus_file, max_steps=4, eval_interval=2, eval_tokens=512,
                      hellaswag_items=2, hellaswag_file=str(_jsonl(tmp_path / "hs.jsonl", HELLASWAG)))
    probe = Probe()
    with probe.watching():
        train(cfg)
    probe.assert_no_graph(saved=False)  # training steps save tensors; eval-mode forwards must not record
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "hellaswag_acc" in r] == [2, 4]


def test_fine_tuning_validation_builds_no_graph(trained_run):
    from tinylm.data.examples import Example
    from tinylm.evaluation.perplexity import score_examples

    run = tinylm.load(trained_run, dtype="float32")
    run.model.train()  # as the trainer leaves it between validation passes
    ids = np.array(run.tokenizer.encode("HAMLET:\nWho is there?\n"))
    labels = ids.copy()
    labels[:8] = -1  # the loss on the reply only
    probe = Probe()
    with probe.watching():
        nats, count = score_examples(run.model, [Example(ids, labels)])
    probe.assert_no_graph()
    assert count == len(ids) - 8 and nats > 0 and run.model.training
