"""The data model every task is read into: `Example` (one input, its label, its options) and `TaskData`.

Kept apart from tasks.py so that the file readers (builtin_tasks.py) and the loaders that call them share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One input. ``label``: class index (single-label), multi-hot list (multi-label) or answer position.

    ``meta`` keys: ``line`` (where the row starts in its file; not for JSON arrays), ``id`` (the data set's
    id; the item index for Recipe-MPR), ``mojibake_fixed`` (humor), ``query_types``, ``option_ids`` (in
    shuffled order) and ``answer_id`` (recipe-mpr).
    """

    text: str
    pair: str | None = None
    label: int | list[int] | None = None
    choices: list[str] | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class TaskData:
    """A loaded task. ``folds`` (recipe-mpr) holds (train, val, test) index lists into ``train``.

    ``source`` records how the files were read (paths, columns, seed, GoEmotions' taxonomy) so that
    ``load_eval_file`` can read a test file the same way. ``added`` holds the examples of extra training sources,
    already in this task's label space, and ``added_counts`` what their mapping did (data/sources.py): protocols
    train on them and never evaluate on them.
    """

    name: str
    kind: str
    label_names: list[str]
    train: list[Example]
    dev: list[Example]
    folds: list[tuple[list[int], list[int], list[int]]] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    added: list[Example] = field(default_factory=list)
    added_counts: list[dict] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)
