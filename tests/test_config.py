import pytest

from tinylm.config import (RunConfig, SampleConfig, apply_overrides, load_preset, preset_names, read_toml,
                           set_key, update)
from tinylm.errors import ConfigError


def test_defaults_and_every_preset_validate():
    RunConfig().validate()
    assert {"shakespeare-char", "tiny-test"} <= set(preset_names())
    for name in preset_names():
        cfg = load_preset(name).validate()
        assert cfg.preset == name


def test_overrides_are_typed():
    cfg = RunConfig()
    apply_overrides(cfg, ["model.n_layer=3", "train.lr=3e-4", "train.time_budget=60",
                          "model.bias=false", "data.source=my corpus.txt", "train.device=cpu"])
    assert cfg.model.n_layer == 3 and isinstance(cfg.model.n_layer, int)
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.time_budget == 60.0 and isinstance(cfg.train.time_budget, float)
    assert cfg.model.bias is False
    assert cfg.data.source == "my corpus.txt"


def test_string_values_are_kept_verbatim():
    cfg = SampleConfig()
    set_key(cfg, "prompt", "  ROMEO:\n", "--prompt", parse=True)
    assert cfg.prompt == "  ROMEO:\n"
    set_key(cfg, "seed", "none", "--seed", parse=True)
    assert cfg.seed is None
    set_key(cfg, "seed", "7", "--seed", parse=True)
    assert cfg.seed == 7


@pytest.mark.parametrize("assignment, fragment", [
    ("model.n_layers=4", "did you mean 'model.n_layer'"),
    ("nope.x=1", "unknown config key 'nope.x'"),
    ("model=3", "unknown config key 'model'"),
    ("model.n_layer=four", "model.n_layer expects an integer, got 'four'"),
    ("model.n_layer=1.5", "expects an integer"),
    ("train.lr=fast", "train.lr expects a number"),
    ("model.bias=maybe", "expects true or false"),
    ("model.n_layer", "expects section.key=value"),
])
def test_bad_overrides_name_the_problem(assignment, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        apply_overrides(RunConfig(), [assignment])


def test_toml_values_are_type_checked(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[model]\nn_layer = 2\nd_model = 64\nn_head = 2\n[train]\nlr = 1\n')
    cfg = update(RunConfig(), read_toml(good), origin=str(good))
    assert cfg.model.n_layer == 2 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nn_layer = "2"\n')
    with pytest.raises(ConfigError, match="bad.toml: model.n_layer expects int"):
        update(RunConfig(), read_toml(bad), origin=str(bad))
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'"):
        update(RunConfig(), {"train": {"learning_rate": 1e-3}}, origin="x")
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        read_toml(tmp_path / "missing.toml")


@pytest.mark.parametrize("assignment, fragment", [
    ("model.n_head=5", "divisible by model.n_head"),
    ("train.dtype=float8", "train.dtype must be one of"),
    ("train.optimizer=sgdx", "optimizer 'sgdx' does not exist"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("train.batch_size=0", "train.batch_size 0 .automatic. needs train.batch_tokens"),
    ("model.dropout=1", "model.dropout"),
])
def test_validation_catches_inconsistent_values(assignment, fragment):
    cfg = RunConfig()
    apply_overrides(cfg, [assignment])
    with pytest.raises(ConfigError, match=fragment):
        cfg.validate()


def test_round_trip_through_dict():
    cfg = load_preset("shakespeare-char")
    apply_overrides(cfg, ["model.vocab_size=66"])
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known presets: .*shakespeare-char"):
        load_preset("shakespeare-word")
