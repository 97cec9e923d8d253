"""Settings in typed sections: flat flags and flat or sectioned TOML files give the same frozen config; every check
lives in config/validate.py; library parameters carry their flag's name."""

import dataclasses
import json

import pytest

from minitune.cli import build_parser, flag_for, main, parse_config
from minitune.config.load import COMMAND_ONLY, dump, make_config
from minitune.config.sections import FLAT, SECTIONS, LoopSettings, RunConfig
from minitune.errors import ConfigError


def test_every_setting_has_one_home_and_one_flag():
    assert len(FLAT) == len(set(FLAT)) > 70
    assert FLAT["lora_r"] == ("model", "adapter") and FLAT["lr"] == ("loop",) and FLAT["seed"] == ()
    assert {"data", "model", "model.adapter", "loss", "loop", "eval", "generative", "distributed", "outputs"} <= set(
        SECTIONS
    )
    flags = {o for a in build_parser()._actions for o in a.option_strings}
    training = set(FLAT) - {"command", "teacher", "distill_alpha", "temperature", "alone"}
    assert {"--" + name.replace("_", "-") for name in training} <= flags


def test_flat_and_sectioned_toml_give_the_same_config(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text('task = "semeval"\nlr = 3e-5\nlora_r = 8\nthreshold = 0.3\nbatch-size = 16\n')
    sectioned = tmp_path / "sections.toml"
    sectioned.write_text(
        '[data]\ntask = "semeval"\nbatch_size = 16\n[loop]\nlr = 3e-5\n[model.adapter]\nlora_r = 8\n'
        "[eval]\nthreshold = 0.3\n"
    )
    a, b = make_config(config=str(flat)), make_config(config=str(sectioned))
    assert a == b and a.loop.lr == 3e-5 and a.model.adapter.lora_r == 8 and a.data.batch_size == 16
    mixed = tmp_path / "mixed.toml"  # a section's table may hold its subsections' settings too
    mixed.write_text('task = "semeval"\n[model]\nmodel = "minilm"\nlora_r = 8\n')
    assert make_config(config=str(mixed)).model.adapter.lora_r == 8


def test_a_setting_in_another_sections_table_is_named_with_its_home(tmp_path):
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[loop]\ntask = "humor"\n')
    with pytest.raises(ConfigError, match=r"'task' is not a setting of \[loop\]; it belongs in \[data\]"):
        make_config(config=str(wrong))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('task = "humor"\n[loop]\nlearning_rate = 1\n')
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate' in \[loop\]"):
        make_config(config=str(unknown))


def test_the_config_is_frozen_and_derived_not_changed():
    cfg = make_config(task="humor", model="ffnn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loop.lr = 1.0
    member = cfg.with_settings(seed=7, output_dir="elsewhere")
    assert (member.seed, member.outputs.output_dir, member.loop.lr) == (7, "elsewhere", cfg.loop.lr)
    assert cfg.seed == 42 and cfg.outputs.output_dir == "runs/humor-ffnn"  # the original is untouched


def test_config_json_is_flat_and_every_setting_reads_back(tmp_path):
    cfg = make_config(task="goemotions", lora_r=4, seeds=[1, 2])
    saved = json.loads(dump(cfg))
    assert saved["lora_r"] == 4 and saved["seeds"] == [1, 2] and saved["threshold"] == 0.3  # the task default
    toml = tmp_path / "again.toml"
    toml.write_text(
        "\n".join(f"{k} = {json.dumps(v)}" for k, v in saved.items() if v is not None and k not in COMMAND_ONLY)
    )
    assert make_config(config=str(toml)) == cfg


def test_folds_has_one_meaning(capsys, data_dir):
    """`folds` is cv's K; training the first N of Recipe-MPR's published folds is `max_folds`."""
    assert main(["--task", "recipe-mpr", "--folds", "1", "--data-dir", str(data_dir)]) == 2
    assert "use --max-folds" in capsys.readouterr().err
    assert main(["cv", "--task", "humor", "--max-folds", "2", "--data-dir", str(data_dir)]) == 2
    assert "minitune cv sets its own with --folds" in capsys.readouterr().err
    assert parse_config(["--task", "recipe-mpr", "--max-folds", "2"]).max_folds == 2


def test_the_loop_reads_its_section_alone():
    """fit's settings are the loop section: nothing of the data, model or outputs reaches it."""
    loop = make_config(task="humor").loop
    assert isinstance(loop, LoopSettings) and not hasattr(loop, "model") and not hasattr(loop, "resume")
    assert {f.name for f in dataclasses.fields(RunConfig)} >= {"data", "model", "loss", "loop", "outputs"}


def test_flags_render_library_parameters_without_a_table():
    assert flag_for("lora_targets") == "--lora-targets" and flag_for("focal_gamma") == "--focal-gamma"
    assert flag_for("gamma") == "gamma"  # a loss class's own parameter: no flag sets it
    with pytest.raises(ConfigError, match="^focal_gamma must be >= 0"):
        make_config(task="semeval", loss="focal", focal_gamma=-1.0)
