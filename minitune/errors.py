"""Errors a user can cause. Each carries one line that names the file or parameter and the fix.

The CLI (minitune/cli.py) catches MinituneError, prints its message on one line and exits 2; anything else is a
bug and keeps its traceback.

Library functions name their own parameters, not command-line flags: an error writes each parameter it names
between backticks (f"`lora_targets`: pattern {p!r} matches no linear layer"). A parameter that a setting reaches
carries the setting's name, which is its flag's name underscored. Printed as is, the backticks go
(`lora_targets: pattern ...`); the CLI renders each name that is one of its flags as the flag
(`--lora-targets: pattern ...`), and leaves any other name as it is.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

_PARAM = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


class MinituneError(Exception):
    """A problem with the user's input (file, flag, model, checkpoint), not a bug in minitune.

    Parameters named in the message stand between backticks; see the module docstring."""

    def __init__(self, message: str = ""):
        self.template = message
        super().__init__(self.render(lambda name: name))

    @property
    def params(self) -> list[str]:
        return _PARAM.findall(self.template)

    def render(self, name_of: Callable[[str], str]) -> str:
        """The message with each `parameter` written as name_of(parameter)."""
        return _PARAM.sub(lambda m: name_of(m.group(1)), self.template)


class ModelNotFoundError(MinituneError):
    pass


class CheckpointError(MinituneError):
    pass


class DataError(MinituneError):
    pass


class ConfigError(MinituneError):
    pass


class ParameterError(ConfigError):
    """A bad value for a named parameter of a library function."""


def did_you_mean(value, known) -> str:
    """` (did you mean 'x'?)` for the closest of `known` to a mistyped value, or nothing."""
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
