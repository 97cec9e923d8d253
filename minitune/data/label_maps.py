"""Label maps: one data set's labels carried into another's label space, and GoEmotions' own coarser taxonomies.

A label map is a TOML table, in its own file or inline in a run's TOML config (sources.py reads where it comes from):

    empty = "drop"           # an example left with no target label: "drop" it, or keep it as "negative" (all off)
    no_label = ["neutral"]   # optional: the target labels of a source example that carries no label at all
    [map]                    # source label -> a target label or a list of them; several sources may share one
    anger = "anger"
    shame = ["embarrassment"]

Rules, the same for every source and target:
- A source label the map does not name is dropped from its example, and counted per label.
- The example's target labels are the union of its mapped labels. An example left with none is dropped or kept
  with every label off, as `empty` says; when some are left empty and `empty` is not given, that is an error that
  counts them, so the choice is always written down. Keeping them as negatives needs a multi-label target.
- Into a single-label target each source label maps to one target label; an example of a multi-label source whose
  labels map to two different target labels has no single answer and is dropped, counted as ambiguous.
- Into a multi-label target any mix works: a single-label source's example gets the one or more labels its label
  maps to; a multi-label source's gets the union.

Taxonomies regroup GoEmotions' 27 emotions, keeping neutral apart, as the data set's authors published them
(google-research/google-research, goemotions/data/ekman_mapping.json and sentiment_dict.json; Demszky et al.,
2020, "GoEmotions: A Dataset of Fine-Grained Emotions", ACL): Ekman's six basic emotions, and sentiment
(positive, negative, ambiguous). They are label maps too, shipped in data/maps/ beside the SemEval-2018 E-c map.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from minitune.data.examples import Example
from minitune.data.kinds import MULTI_LABEL, SINGLE_LABEL
from minitune.errors import ConfigError

MAPS_DIR = Path(__file__).parent / "maps"
TAXONOMIES = ("ekman", "sentiment")
EMPTY_CHOICES = ("drop", "negative")
MAP_KEYS = {"map", "empty", "no_label"}


@dataclass(frozen=True)
class LabelMap:
    """Source label -> target labels; `where` names the file or table it came from, for errors."""

    where: str
    pairs: dict[str, tuple[str, ...]]
    empty: str | None = None
    no_label: tuple[str, ...] = ()


@dataclass
class Mapped:
    """A source's examples in the target's label space, and what the mapping did, counted."""

    examples: list[Example]
    unmapped: Counter  # source label -> how many times it was dropped from an example
    dropped_empty: int = 0  # examples left with no target label and dropped
    kept_negative: int = 0  # examples left with no target label and kept with every label off
    dropped_ambiguous: int = 0  # single-label target: examples whose labels map to several target labels
    from_no_label: int = 0  # examples without any source label that `no_label` gave labels


def _labels(where: str, key: str, value) -> tuple[str, ...]:
    """A map value: one label or a list of labels."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: {key} = {value!r} should be a label name or a list of label names")


def parse_map(table: dict, where: str) -> LabelMap:
    """A label map from its TOML table (`where` starts each error: the file or table)."""
    pairs = table.get("map")
    if not isinstance(pairs, dict) or not pairs:
        raise ConfigError(f'{where}: no [map] table; write one line per source label, e.g. joy = "joy"')
    empty = table.get("empty")
    if empty is not None and empty not in EMPTY_CHOICES:
        raise ConfigError(f'{where}: empty = {empty!r}; choose "drop" or "negative"')
    no_label = _labels(where, "no_label", table["no_label"]) if "no_label" in table else ()
    mapped = {str(k): _labels(where, f"map.{k}", v) for k, v in pairs.items()}
    return LabelMap(where, mapped, empty, no_label)


def read_map_file(path: Path) -> dict:
    """A TOML file as a table; a missing or malformed file is one line naming it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; give the path of a source file or label map (.toml; a relative path starts in "
            "the folder the run was started from)"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror}); give the path of a .toml file") from None


def shipped(name: str) -> LabelMap:
    """A map that ships in data/maps/ (`semeval-goemotions`, `goemotions-ekman`, ...)."""
    path = MAPS_DIR / f"{name}.toml"
    return parse_map(read_map_file(path), str(path))


def shipped_between(source: str, target: str) -> LabelMap | None:
    """The shipped map from a built-in task into another, if one ships."""
    return shipped(f"{source}-{target}") if (MAPS_DIR / f"{source}-{target}.toml").is_file() else None


def taxonomy_map(name: str) -> LabelMap:
    """GoEmotions' 28 labels -> a taxonomy's groups (neutral stays neutral)."""
    return shipped(f"goemotions-{name}")


def taxonomy_labels(name: str, fine: list[str]) -> list[str]:
    """A taxonomy's labels in the published order (the groups as they first appear in its map, neutral last)."""
    order = [t for targets in taxonomy_map(name).pairs.values() for t in targets]
    groups = list(dict.fromkeys(t for t in order if t != "neutral"))
    return groups + (["neutral"] if "neutral" in fine else [])


def checked(lmap: LabelMap, sources: list[str], targets: list[str], target_kind: str, regroup: LabelMap | None):
    """The map with every label checked against the two label spaces, and its targets carried through `regroup`
    (the target task's taxonomy) where they name the finer labels."""

    def resolve(key: str, names: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for name in names:
            if regroup is not None and name in regroup.pairs:
                out += regroup.pairs[name]
            elif name in targets:
                out.append(name)
            else:
                raise ConfigError(
                    f"{lmap.where}: {key} names {name!r}, which is not a label of the target task; its labels are "
                    f"{', '.join(targets)}"
                )
        return tuple(dict.fromkeys(out))

    unknown = [s for s in lmap.pairs if s not in sources]
    if unknown:
        raise ConfigError(
            f"{lmap.where}: [map] names {unknown[0]!r}, which is not a label of the source; its labels are "
            f"{', '.join(sources)}"
        )
    pairs = {s: resolve(f"map.{s}", t) for s, t in lmap.pairs.items()}
    no_label = resolve("no_label", lmap.no_label)
    if target_kind == SINGLE_LABEL:
        several = next(((s, t) for s, t in pairs.items() if len(t) > 1), None)
        if several:
            raise ConfigError(
                f"{lmap.where}: {several[0]} maps to {', '.join(several[1])}, but the target task takes one label "
                "per example; map it to one"
            )
        if len(no_label) > 1 or lmap.empty == "negative":
            raise ConfigError(
                f"{lmap.where}: the target task takes one label per example, so no_label names one label at most "
                'and empty must be "drop"'
            )
    return LabelMap(lmap.where, pairs, lmap.empty, no_label)


def map_examples(
    examples: list[Example],
    kind: str,
    sources: list[str],
    lmap: LabelMap,
    targets: list[str],
    target_kind: str,
    tag: dict,
) -> Mapped:
    """Every example carried into the target's label space by a checked map (`checked`), with `tag` added to its
    meta (the source's name); those the rules drop are counted instead."""
    index = {name: i for i, name in enumerate(targets)}
    out = Mapped([], Counter())
    for ex in examples:
        have = [sources[ex.label]] if kind == SINGLE_LABEL else [s for s, on in zip(sources, ex.label) if on]
        out.unmapped.update(s for s in have if s not in lmap.pairs)
        mapped = list(dict.fromkeys(t for s in have if s in lmap.pairs for t in lmap.pairs[s]))
        if not have and lmap.no_label:
            mapped, out.from_no_label = list(lmap.no_label), out.from_no_label + 1
        if target_kind == SINGLE_LABEL and len(mapped) > 1:
            out.dropped_ambiguous += 1
            continue
        if not mapped and lmap.empty != "negative":
            out.dropped_empty += 1
            continue
        out.kept_negative += not mapped
        if target_kind == MULTI_LABEL:
            label = [0] * len(targets)
            for t in mapped:
                label[index[t]] = 1
        else:
            label = index[mapped[0]]
        out.examples.append(Example(ex.text, pair=ex.pair, label=label, meta=ex.meta | tag))
    if out.dropped_empty and lmap.empty is None:
        raise ConfigError(
            f"{lmap.where}: {out.dropped_empty} examples have no target label after mapping; say what happens to "
            'them with empty = "drop" or empty = "negative"'
        )
    return out


def regroup_examples(examples: list[Example], fine: list[str], name: str, coarse: list[str]) -> list[Example]:
    """GoEmotions examples relabelled in a taxonomy: each label replaced by its group (every label has one)."""
    lmap = checked(taxonomy_map(name), fine, coarse, MULTI_LABEL, None)
    return map_examples(examples, MULTI_LABEL, fine, lmap, coarse, MULTI_LABEL, {}).examples
