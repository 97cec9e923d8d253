"""Prompts for generative classification: the instruction, the few-shot turns and the answer text of an example.

The default instruction is built from the task's label names (and the options, lettered A, B, ..., for multiple
choice); `--prompt-template FILE` replaces it with a Jinja template rendered in the chat-template sandbox with
`text`, `pair`, `labels` (display names), `options` (list of {letter, text}) and `kind`. The prompt is the user
turn of the checkpoint's chat template; the answer is the assistant turn: a label name, distinct label names joined
by ", " (multi-label), or an option letter.

Few-shot examples are drawn from train, stratified: one per class in turn (classes in a seeded order; for
multi-label the class of an example is its first label, and examples without a label are not drawn), so K shots
cover min(K, classes) classes. They enter the chat as earlier user/assistant turns.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from minitune.data.chat import ChatTemplate, TemplateError, sandbox
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.tasks import Example, TaskData
from minitune.errors import ConfigError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SEPARATOR = ", "


def display_names(task: TaskData) -> list[str]:
    """What the model reads and writes for each class: the label name with underscores as spaces; the option
    letters for multiple choice."""
    if task.kind == MULTIPLE_CHOICE:
        return list(LETTERS[: task.num_labels])
    return [n.replace("_", " ") for n in task.label_names]


def answer_text(task: TaskData, ex: Example) -> str:
    names = display_names(task)
    if task.kind == MULTI_LABEL:
        return SEPARATOR.join(n for n, on in zip(names, ex.label) if on)
    return names[ex.label]


def default_instruction(task: TaskData, ex: Example) -> str:
    names = display_names(task)
    if task.kind == MULTIPLE_CHOICE:
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(ex.choices or []))
        return f"{ex.text}\n\nOptions:\n{options}\n\nAnswer with the letter of the best option only."
    text = ex.text if ex.pair is None else f"{ex.text}\n\nSecond text: {ex.pair}"
    if task.kind == MULTI_LABEL:
        return (
            f"Which of these labels apply to the text? Labels: {SEPARATOR.join(names)}.\n"
            f"Answer with the matching labels only, separated by commas.\n\nText: {text}"
        )
    return f"Classify the text as one of: {SEPARATOR.join(names)}.\nAnswer with the label only.\n\nText: {text}"


class PromptTemplate:
    """A user-supplied Jinja file for the user turn, compiled in the sandbox."""

    def __init__(self, path: str | Path):
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"`prompt_template` {p}: no such file; give a Jinja template file")
        self.where = str(p)
        try:
            self.source = p.read_text(encoding="utf-8")
            self.template = sandbox().from_string(self.source)
        except Exception as e:  # TemplateSyntaxError and decoding errors: one line naming the file
            raise ConfigError(f"`prompt_template` {p}: the template does not parse ({e})") from None

    def render(self, task: TaskData, ex: Example) -> str:
        options = [{"letter": LETTERS[i], "text": c} for i, c in enumerate(ex.choices or [])]
        try:
            return self.template.render(
                text=ex.text, pair=ex.pair, labels=display_names(task), options=options, kind=task.kind
            ).strip()
        except Exception as e:
            raise ConfigError(f"`prompt_template` {self.where}: rendering failed ({e})") from None


def user_turn(task: TaskData, ex: Example, template: PromptTemplate | None) -> str:
    return template.render(task, ex) if template is not None else default_instruction(task, ex)


def choose_shots(task: TaskData, examples: Sequence[Example], k: int, seed: int) -> list[Example]:
    """k examples stratified by class, in a seeded order (see the module docstring)."""
    if k <= 0:
        return []
    rng = random.Random(seed)
    by_class: dict[int, list[Example]] = {}
    for ex in examples:
        if task.kind == MULTI_LABEL:
            if not any(ex.label):
                continue
            c = list(ex.label).index(1)
        else:
            c = ex.label
        by_class.setdefault(c, []).append(ex)
    if sum(len(v) for v in by_class.values()) < k:
        raise ConfigError(f"`shots` {k}: the training split has only {len(examples)} usable examples; ask fewer")
    pools = {c: rng.sample(v, len(v)) for c, v in sorted(by_class.items())}
    order = rng.sample(sorted(pools), len(pools))
    shots: list[Example] = []
    while len(shots) < k:
        for c in order:
            if pools[c] and len(shots) < k:
                shots.append(pools[c].pop())
    return rng.sample(shots, len(shots))  # classes not in a fixed round-robin pattern


def messages(
    task: TaskData, ex: Example, shots: Sequence[Example], template: PromptTemplate | None
) -> list[dict[str, str]]:
    """The chat: each shot as a user turn and its answer, then the example's user turn."""
    chat: list[dict[str, str]] = []
    for s in shots:
        chat += [
            {"role": "user", "content": user_turn(task, s, template)},
            {"role": "assistant", "content": answer_text(task, s)},
        ]
    return chat + [{"role": "user", "content": user_turn(task, ex, template)}]


def prompt_ids(tokenizer, chat_template: ChatTemplate | None, chat: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt, ending where the answer starts. Without a chat template (a base model) the turns
    are plain text, each answer after "Answer: "."""
    if chat_template is not None:
        try:
            return chat_template.encode(tokenizer, chat, add_generation_prompt=True)
        except TemplateError as e:
            raise ConfigError(str(e)) from None
    parts = [m["content"] + ("\n\n" if m["role"] == "assistant" else "\nAnswer: ") for m in chat]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer.encode_text("".join(parts).rstrip(" "))


def truncate_text(tokenizer, ex: Example, max_tokens: int) -> Example:
    """The example with its text (and pair) cut to max_tokens tokens each, so a long input cannot crowd out
    the instruction and the shots."""

    def cut(s: str | None) -> str | None:
        if s is None:
            return None
        ids = tokenizer.encode_text(s)
        return s if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])

    return Example(text=cut(ex.text), pair=cut(ex.pair), label=ex.label, choices=ex.choices, meta=ex.meta)
