"""Errors a user can cause. Each carries one line that names the file or flag and the fix.

run.py catches MinituneError, prints its message on one line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class MinituneError(Exception):
    """A problem with the user's input (file, flag, model, checkpoint), not a bug in minitune."""


class ModelNotFoundError(MinituneError):
    pass


class CheckpointError(MinituneError):
    pass


class DataError(MinituneError):
    pass


class ConfigError(MinituneError):
    pass
