"""The settings as command-line flags: one flag per setting (its name with dashes), grouped by section in --help,
and the parser that ends in one line instead of the usage. The commands' own flags are in commands.py."""

from __future__ import annotations

import argparse

from minitune.config.load import COMMAND_ONLY, choices_of, field_type, flag, make_config
from minitune.config.sections import FLAT, RunConfig, setting_field
from minitune.errors import ConfigError, did_you_mean


def _help(name: str) -> str:
    """The flag's help with its choices and its default, each said once."""
    f = setting_field(name)
    text = f.metadata["help"]
    if choices_of(name) and name != "task":
        text += f" (one of: {', '.join(choices_of(name))})"
    if f.default not in (None, False) and "default" not in text:
        text += f" (default: {f.default})"
    return text


def add_setting(p, name: str, **kw) -> None:
    """The flag of setting `name`, typed as the setting (a bool as --x / --no-x, a tuple as several values)."""
    typ = field_type(name)
    kw = dict(help=_help(name), dest=name) | kw
    if typ is bool:
        p.add_argument(flag(name), action=argparse.BooleanOptionalAction, **kw)
    elif name == "add_train":  # repeatable: --add-train semeval --add-train isear.toml
        p.add_argument(flag(name), type=str, nargs="+", action="extend", metavar="SOURCE", **kw)
    elif typ is tuple:  # --seeds 42 123 456, --teacher DIR DIR, --source-weights 0.5 1
        element = {"seeds": int, "source_weights": float}.get(name, str)
        metavar = {int: "N", float: "W"}.get(element, "DIR")
        p.add_argument(flag(name), type=element, nargs="+", metavar=metavar, **kw)
    else:
        p.add_argument(flag(name), type=typ, metavar=name.upper(), **kw)


def add_settings(p, names) -> None:
    """One argument group per section (--help lists the settings as the config holds them); flags stay flat."""
    groups = {}
    for name in names:
        section = ".".join(FLAT[name][:1]) or "run"
        if section not in groups:
            groups[section] = p.add_argument_group(f"{section} settings" if section != "run" else "run settings")
        # SUPPRESS keeps unset flags out of the namespace, so task defaults and the TOML file can fill them.
        add_setting(groups[section], name, default=argparse.SUPPRESS)


COMMANDS_HELP = """commands:
  minitune [train] --task T ...      fine-tune a model (the default command; its flags are below)
  minitune predict --model DIR ...   label a file with a trained model (minitune predict --help)
  minitune explain --model DIR ...   each token's share of a prediction, by integrated gradients
  minitune report RUN_DIR            redraw a run's figures and report.html (no model needed)
  minitune export --model DIR ...    export a trained classifier to ONNX (minitune export --help)
  minitune cv --task T --folds K ... k-fold cross-validation with out-of-fold predictions (training flags)
  minitune sweep FILE.toml           a multi-phase search with a leaderboard (minitune sweep --help)
  minitune distill --teacher DIR ... train a student on a teacher's probabilities (minitune distill --help)
  minitune compare RUN_DIR ...       one table of finished runs, sorted by the task's metric
  --seeds 42 123 456 on train or cv: one model per seed and their ensemble"""


class CommandParser(argparse.ArgumentParser):
    """argparse that raises instead of printing the usage: the CLI prints one line and a pointer to --help."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            flags = [o for a in self._actions for o in a.option_strings]
            message += did_you_mean(message.split()[2], flags)
        raise ConfigError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="minitune",
        usage="minitune [train] --task TASK [options]",
        description="Fine-tune a pretrained transformer on a text classification task.\nDefaults shown are the "
        "general ones; each task's own defaults (TASK_DEFAULTS in minitune/config/defaults.py)\napply first.",
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--config", help="TOML file setting any of the keys below, flat or in [section] tables (flags win)")
    add_settings(p, [name for name in FLAT if name not in COMMAND_ONLY])
    return p


def parse_config(argv: list[str] | None = None) -> RunConfig:
    args = vars(build_parser().parse_args(argv))
    return make_config(**args)


def flag_for(param: str, flags: set[str] | None = None) -> str:
    """The command-line flag that sets a library parameter (library parameters carry the flag's name, underscored);
    the parameter's own name when no flag sets it. `flags`: the command's option names (default: the settings)."""
    known = flags if flags is not None else set(FLAT) | {"config"}
    return flag(param) if param in known else param
