"""Serving LoRA adapters (`tinylm serve BASE --adapter NAME=ADAPTER_RUN`): each adapter is its own model
id, and rows of different models decode in one batch with per-row adapters.

These tests need fine-tuning (issue 16: `tinylm finetune`, `tinylm.model.lora.set_active`,
`Run.attach_adapter`, `Run.chat_template`); they are skipped until that work is merged."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("tinylm.model.lora", reason="LoRA fine-tuning (issue 16) is not merged yet")

import openai  # noqa: E402
from openai import OpenAI  # noqa: E402

import tinylm  # noqa: E402
from serving_server import running  # noqa: E402
from tinylm.cli import main  # noqa: E402
from tinylm.run import FULL, MODEL_FILE, save_weights  # noqa: E402
from tinylm.serving import create_app  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]


@pytest.fixture(scope="module")
def adapter_run(trained_run: Path, corpus_text: str, tmp_path_factory) -> Path:
    """A LoRA adapter fine-tuned for a few steps on chats made from the corpus, with the plain template."""
    folder = tmp_path_factory.mktemp("adapter")
    lines = [line.strip() for line in corpus_text.splitlines() if len(line.strip()) > 20][:64]
    chats = folder / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": a}, {"role": "assistant",
                                                                                         "content": b}]}) + "\n"
                             for a, b in zip(lines[::2], lines[1::2], strict=False)), encoding="utf-8")
    out = folder / "poet"
    assert main(["finetune", str(trained_run), "--data", str(chats), "--out", str(out), "--method", "lora",
                 "--template", "plain", "--max-steps", "30", "--lr", "1e-2", "--dtype", "float32"]) == 0
    return out


@pytest.fixture(scope="module")
def url(trained_run: Path, adapter_run: Path):
    # model ids with dots and a slash, and one that is a torch attribute name: any id names an adapter
    app = create_app(trained_run, model_name="tiny", adapter=[f"poet={adapter_run}", f"poet.v1.2={adapter_run}",
                                                              f"me/keys={adapter_run}"], max_batch=8, dtype="float32")
    with running(app) as base:
        yield base


@pytest.fixture
def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_adapters_are_listed_and_chosen_by_model_id(client: OpenAI, trained_run: Path, adapter_run: Path):
    assert [m.id for m in client.models.list()] == ["tiny", "poet", "poet.v1.2", "me/keys"]
    assert client.models.retrieve("poet.v1.2").id == "poet.v1.2" and client.models.retrieve("me/keys").id == "me/keys"
    base = tinylm.load(trained_run, dtype="float32")
    tuned = tinylm.load(adapter_run, dtype="float32")
    for model, run in (("tiny", base), ("poet", tuned), ("poet.v1.2", tuned), ("me/keys", tuned)):
        r = client.completions.create(model=model, prompt="ROMEO:\n", max_tokens=30, temperature=0)
        assert r.choices[0].text == run.generate("ROMEO:\n", max_new_tokens=30, temperature=0)
    scores = [client.completions.create(model=m, prompt="ROMEO:\nWhat", max_tokens=0, echo=True, logprobs=0)
              .choices[0].logprobs.token_logprobs[1:] for m in ("tiny", "poet")]
    assert scores[0] != scores[1]  # the adapter changes the model


def test_rows_of_different_adapters_decode_together(client: OpenAI, trained_run: Path, adapter_run: Path):
    base = tinylm.load(trained_run, dtype="float32")
    tuned = tinylm.load(adapter_run, dtype="float32")
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        model = "poet" if i % 2 else "tiny"
        r = client.completions.create(model=model, prompt="KING:\n", max_tokens=40, seed=100 + i, temperature=1.0)
        results[i] = r.choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(6):
        run = tuned if i % 2 else base
        assert results[i] == run.generate("KING:\n", max_new_tokens=40, seed=100 + i, temperature=1.0)


def test_an_adapter_chats_with_its_own_template(client: OpenAI, adapter_run: Path):
    tuned = tinylm.load(adapter_run, dtype="float32")
    template = tuned.chat_template
    assert template is not None and template.name == "plain"
    messages = [{"role": "user", "content": "Who is there?"}]
    r = client.chat.completions.create(model="poet", messages=messages, max_tokens=30, seed=5, temperature=1.0)
    assert r.choices[0].message.content == tuned.chat(messages, seed=5, temperature=1.0, max_new_tokens=30)
    with pytest.raises(openai.BadRequestError):  # the base run has no template and none was given
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=5)


def test_an_adapter_of_another_base_model_is_a_one_line_error(capsys, trained_run: Path, adapter_run: Path,
                                                               tmp_path: Path):
    other = tmp_path / "other-base"
    other.mkdir()
    for f in trained_run.iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    run = tinylm.load(trained_run, dtype="float32")
    run.model.tok_emb.weight.data.mul_(1.01)  # other base weights, same shapes
    for name in {MODEL_FILE, FULL.path(trained_run).name}:
        save_weights(run.model, other / name, run.metadata)
    capsys.readouterr()
    assert main(["serve", str(other), "--port", "0", "--adapter", f"poet={adapter_run}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err


@pytest.mark.parametrize("name", ["a.b", "", "keys", "training", "a b", "ü"])
def test_an_adapter_name_torch_cannot_hold_is_a_one_line_error(trained_run: Path, adapter_run: Path, name: str):
    """`Run.attach_adapter` names the adapter's parameters: a dot, an empty name or a name of torch's
    dicts' own attributes is refused in one line before any layer changes (the server names its
    adapters itself, so any model id works there, see above)."""
    from tinylm.errors import ConfigError
    from tinylm.model import lora

    run = tinylm.load(trained_run, dtype="float32")
    with pytest.raises(ConfigError) as e:
        run.attach_adapter(name, adapter_run)
    assert "cannot name a LoRA adapter" in str(e.value) and "\n" not in str(e.value)
    assert lora.adapter_names(run.model) == [] and not lora.lora_layers(run.model)
