"""The three kinds of task, named once: they decide the head, the loss, the activation and the metrics."""

SINGLE_LABEL, MULTI_LABEL, MULTIPLE_CHOICE = "single_label", "multi_label", "multiple_choice"
KINDS = (SINGLE_LABEL, MULTI_LABEL, MULTIPLE_CHOICE)


def normalize_kind(kind: str) -> str:
    """Accept "single-label" as well as "single_label" (and so on); return the underscore form."""
    k = kind.strip().lower().replace("-", "_")
    if k not in KINDS:
        raise ValueError(f"task kind {kind!r} is not one of {', '.join(KINDS)}")
    return k
