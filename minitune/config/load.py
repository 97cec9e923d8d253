"""Settings in, settings out: flat options and TOML files -> a checked RunConfig; a RunConfig -> config.json, the
printed settings and the signature a resumed run must share.

A TOML file may set any setting by its flat name (`lr = 3e-5`, dashes or underscores) or inside its section's table
(`[loop]` `lr = 3e-5`; `[model.adapter]` or `[model]` for `lora_r`): today's flat files keep working. config.json
holds every setting under its flat name, as earlier runs wrote it.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import get_args, get_type_hints

from minitune.checkpoints.rundir import read_json
from minitune.config.defaults import default_metric, defaults_for
from minitune.config.sections import FLAT, SECTIONS, RunConfig, build, default_of, setting_field
from minitune.config.validate import validate
from minitune.errors import ConfigError, did_you_mean
from minitune.train.distributed import world_signature

# Set by the command (`minitune cv`, `minitune distill`), never by a file or a training flag.
COMMAND_ONLY = {"command", "teacher", "distill_alpha", "temperature", "alone"}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_type(name: str) -> type:
    owner = SECTIONS[".".join(FLAT[name])] if FLAT[name] else RunConfig
    hint = get_type_hints(owner)[name]
    return next(t for t in (get_args(hint) or (hint,)) if t is not type(None))


def choices_of(name: str) -> list[str]:
    """A setting's allowed values (None, where allowed, is left out)."""
    return [c for c in (setting_field(name).metadata["choices"] or []) if c is not None]


def coerce(where: str, key: str, value):
    """A value as the setting's type: ints become floats where a float is wanted, lists tuples where a tuple is;
    nothing else is guessed. `where` starts the error message (the TOML file)."""
    typ = field_type(key)
    if typ is tuple and isinstance(value, list):
        value = tuple(value)
    elif typ is tuple and isinstance(value, (str, dict, int, float)) and not isinstance(value, bool):
        value = (value,)  # one of a list: add_train = "semeval", source_weights = 0.5, seeds = 42
    if value is None or isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{where}{key} = {value!r} should be a {typ.__name__} (e.g. {key} = {default_of(key)!r})")


def parse_toml(path: str, prefix: str) -> dict:
    """A TOML file as a dict; a missing or malformed file is one error line starting with `prefix`."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{prefix}file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{prefix}not valid TOML ({e})") from None


def checked_keys(prefix: str, table: dict, allowed, where: str = "", section: tuple[str, ...] = ()) -> dict:
    """A table's settings under their flat names (dashes or underscores; `[section]` tables dissolved): an unknown
    key, or a setting under another section's table, is one error line."""
    out = {}
    for k, v in table.items():
        key = k.replace("-", "_")
        inner = (*section, key)
        if isinstance(v, dict) and ".".join(inner) in SECTIONS:
            out |= checked_keys(prefix, v, allowed, f" in [{'.'.join(inner)}]", inner)
            continue
        if key not in allowed:
            raise ConfigError(
                f"{prefix}unknown key {k!r}{where}{did_you_mean(key, allowed)}; keys are the flags' names, e.g. "
                "batch_size"
            )
        if key in FLAT and FLAT[key][: len(section)] != section:
            home = ".".join(FLAT[key]) or "the top level"
            raise ConfigError(f"{prefix}{k!r} is not a setting of [{'.'.join(section)}]; it belongs in [{home}]")
        out[key] = v
    return out


def read_toml(path: str) -> dict:
    """A TOML file's settings under their flat names."""
    prefix = f"`config` {path}: "
    table = checked_keys(prefix, parse_toml(path, prefix), set(FLAT) - COMMAND_ONLY)
    return {k: coerce(prefix, k, v) for k, v in table.items()}


def make_config(config: str | None = None, **options) -> RunConfig:
    """A checked, frozen RunConfig from settings under their flat names, over a TOML file's (`config`), over the
    task's defaults: what the command line, `minitune.train` and a sweep's trials share."""
    unknown = [k for k in options if k not in FLAT]
    if unknown:
        raise ConfigError(f"unknown setting `{unknown[0]}`{did_you_mean(unknown[0], FLAT)}")
    from_file = read_toml(config) if config else {}
    chosen = {**from_file, **{k: coerce("", k, v) for k, v in options.items()}}
    if chosen.get("resume"):
        return validate(build(resumed_settings(chosen)))
    if chosen.get("task") is None:
        raise ConfigError(f"`task` is required: one of {', '.join(setting_field('task').metadata['choices'])}")
    flat = {**defaults_for(chosen), **chosen}
    if flat.get("metric") is None:
        flat["metric"] = default_metric(flat["task"])
    if flat.get("output_dir") is None:
        flat["output_dir"] = default_output_dir(flat)
    return validate(build(flat))


def default_output_dir(flat: dict) -> str:
    """runs/<task>-<model>, told apart by command (and `seeds`), so that runs of one task and model do not share
    a folder by default."""
    name = f"{flat['task']}-{Path(flat.get('model') or 'minilm').name}"
    command = flat.get("command", "train")
    prefix = "" if command == "train" else f"{command}-"
    return str(Path("runs") / f"{prefix}{name}{'-seeds' if flat.get('seeds') else ''}")


# Settings a resumed run may change: where it runs and reads its files, not what it computes (`overwrite` is kept
# for config/validate.py to refuse it with `resume` in its own words).
CHANGE_ON_RESUME = {"resume", "output_dir", "device", "dist_timeout", "data_dir", "keep_checkpoints", "overwrite"}
CHANGE_ON_RESUME |= {"tracking_uri"}


def resumed_settings(chosen: dict) -> dict:
    """A `resume`: the run's own saved settings (its config.json), with the settings given now. Every one given
    must agree with the saved one, except where the run happens (CHANGE_ON_RESUME); a disagreement names only the
    settings that differ."""
    folder = Path(chosen["resume"])
    if not (folder / "config.json").is_file():
        raise ConfigError(f"`resume` {folder}: no config.json there, so no run to continue; start without `resume`")
    saved = saved_settings(folder)
    command = saved.get("command", "train")
    if chosen.get("command", command) != command:
        run = "" if command == "train" else f"{command} "
        raise ConfigError(f"`resume` {folder} holds a {command} run: continue it with minitune {run}--resume {folder}")
    if chosen.get("output_dir") and Path(chosen["output_dir"]).resolve() != folder.resolve():
        raise ConfigError(
            f"`output_dir` {chosen['output_dir']}: a resumed run goes on in its own folder ({folder}): drop "
            "`output_dir`"
        )
    listed = differing(saved, chosen)
    if listed:
        raise ConfigError(
            f"`resume` {folder} continues the run with its own settings, and {listed} differ: drop them to continue, "
            "or start a new run in another `output_dir`"
        )
    kept = {k: v for k, v in chosen.items() if k in CHANGE_ON_RESUME}
    # The saved `overwrite` said how that run began (clearing the folder); continuing it must not clear it again.
    return saved | {"overwrite": False} | kept | {"output_dir": str(folder), "resume": str(folder)}


def saved_settings(folder: Path) -> dict:
    """A run's saved settings (its config.json), flat, in their types."""
    saved = _migrated(flat_settings(read_json(folder / "config.json")))
    return {k: coerce(f"{folder / 'config.json'}: ", k, v) for k, v in saved.items()}


def differing(saved: dict, given: dict) -> str:
    """The given settings a saved run disagrees with, as "`lr` 0.1 (the run has 0.001), ..."; "" when none do.
    Where a run happens (CHANGE_ON_RESUME) is not part of what it computed."""
    was = lambda k: saved.get(k, default_of(k))  # noqa: E731
    differ = [k for k, v in given.items() if k not in CHANGE_ON_RESUME and v != was(k)]
    return ", ".join(f"`{k}` {_shown(given[k])} (the run has {_shown(was(k))})" for k in differ)


def _shown(value) -> str:
    """A setting's value as a person types it (a flag's words, TOML's true/false), None as unset."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _migrated(saved: dict) -> dict:
    """config.json of a run from before settings had sections: Recipe-MPR's `folds` was today's `max_folds`, and a
    checkpoint count of 1 was the default (today: unset)."""
    if "command" in saved:
        return saved
    if saved.get("task") == "recipe-mpr" and saved.get("folds"):
        saved["max_folds"] = saved.pop("folds")
    if saved.get("keep_checkpoints") == 1:
        saved["keep_checkpoints"] = None
    return saved


def dump(cfg: RunConfig) -> str:
    """config.json: every setting under its flat name (as a TOML file may set it; flat names are unique)."""
    return json.dumps(flat_dict(cfg), indent=2, sort_keys=True)


def flat_settings(saved: dict) -> dict:
    """A saved config.json (sections as tables, or the flat layout of earlier runs) under flat names; keys that are
    no longer settings are left out."""
    out = {}
    for k, v in saved.items():
        if isinstance(v, dict) and k in SECTIONS:
            out |= flat_settings(v)
        elif k in FLAT:
            out[k] = v
    return out


# What a resumed run must share with the run it continues: anything that shapes the model, data or schedule.
RESUME_KEYS = (
    "task",
    "model",
    "label_names",
    "lora_r",
    "lora_alpha",
    "lora_targets",
    "quantize",
    "pooling",
    "choice_scorer",
    "lr",
    "llrd",
    "batch_size",
    "grad_accum",
    "max_tokens",
    "padding",
    "epochs",
    "max_steps",
    "max_length",
    "max_train_samples",
    "threshold_split",
    "seed",
    "scheduler",
    "warmup_ratio",
    "warmup_steps",
    "precision",
)


def resume_signature(cfg: RunConfig) -> dict:
    flat = cfg.flat()
    return {k: flat[k] for k in RESUME_KEYS}


def run_signature(cfg: RunConfig) -> dict:
    """What a checkpoint records of the settings, and a resumed run must share (with the world size)."""
    return world_signature(resume_signature(cfg))


# Shown in the printed settings whatever their value; any other setting is shown when it is not its default.
ALWAYS_SHOWN = (
    "task",
    "model",
    "output_dir",
    "epochs",
    "batch_size",
    "grad_accum",
    "lr",
    "max_length",
    "metric",
    "seed",
    "precision",
    "padding",
)


def unused_settings(flat: dict) -> set[str]:
    """The options of features a run does not use (focal and ASL settings without those losses, LoRA without LoRA,
    a custom file's columns on a built-in task, distill settings outside distill...)."""
    loss = flat["loss"] or ""
    unused = {"command"} | (
        {"teacher", "distill_alpha", "temperature", "alone"} if flat["command"] != "distill" else set()
    )
    if "focal" not in loss:
        unused.add("focal_gamma")
    if "asl" not in loss:
        unused |= {"asl_gamma_neg", "asl_gamma_pos", "asl_clip"}
    if not flat["lora_r"]:
        unused |= {"lora_alpha", "lora_dropout", "lora_targets"}
    if flat["task"] != "custom":
        unused |= {"label_col", "label_names", "delimiter"}
    if not flat["adversarial"]:
        unused |= {"adv_eps", "adv_alpha", "adv_steps", "adv_start_epoch"}
    elif flat["adversarial"] != "pgd":
        unused |= {"adv_alpha", "adv_steps"}
    if not flat["augment"]:
        unused |= {"augment_ops", "augment_prob", "augment_copies", "augment_rare"}
    if flat["augment"] != "tokens":
        unused |= {"augment_ops", "augment_prob"}
    if flat["loss_weighting"] != "uncertainty":
        unused.add("loss_weight_lr")
    if flat["command"] != "train" or flat["seeds"] or flat["head"] == "generative":
        unused |= {"explain_errors", "ig_steps", "ig_baseline"}  # a holdout classifier's report explains its errors
    return unused


def used_settings(cfg: RunConfig) -> dict:
    """The settings that shape this run, flat: the main ones and every one changed from its default."""
    flat = cfg.flat()
    unused = unused_settings(flat)
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in flat.items()
        if k not in unused and (k in ALWAYS_SHOWN or v != default_of(k))
    }


def print_config(cfg: RunConfig, stream=None) -> None:
    stream = stream or sys.stdout  # looked up at call time: a redirected stdout is used
    print(f"settings (every one is saved in {Path(cfg.outputs.output_dir) / 'config.json'}):", file=stream)
    for k, v in used_settings(cfg).items():
        print(f"  {k:20s} {v}", file=stream)


def flat_dict(cfg: RunConfig) -> dict:
    """Every setting, flat and JSON-ready: the `config` table of results.json."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.flat().items()}
