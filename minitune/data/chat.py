"""Chat templates: a checkpoint's own `chat_template` rendered to the text (and ids) an instruct model was tuned on.

The template is Jinja, shipped in tokenizer_config.json (`chat_template`, a string or a list of named templates)
or in a GGUF file's metadata (`tokenizer.chat_template`). Templates come with downloaded checkpoints, so they are
untrusted code: they run in jinja2's ImmutableSandboxedEnvironment (no attribute access to Python internals, no
mutation of the values passed in), never in a plain Environment.

Reference: transformers' `apply_chat_template` (utils/chat_template_utils.py). What must match it
(tests/test_chat.py): trim_blocks and lstrip_blocks on; the globals `raise_exception` (an error) and
`strftime_now`; the variables `messages`, `add_generation_prompt` and the tokenizer's special token strings
(`bos_token`, `eos_token`, ...); the rendered text is tokenized WITHOUT the tokenizer's own special tokens
(the template writes them), so the ids equal apply_chat_template(..., tokenize=True).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from minitune.checkpoints.gguf import read_gguf
from minitune.checkpoints.hub import resolve_model
from minitune.data.tokenizer import SPECIAL_NAMES, Tokenizer
from minitune.errors import CheckpointError, ConfigError

try:  # jinja2 is a runtime dependency (it comes with torch); imported here only so the error names the fix
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:  # pragma: no cover
    jinja2 = None


class TemplateError(ConfigError):
    """A chat template that does not parse, or that raised (raise_exception) on the messages given."""


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; chat templates want the plain JSON, as the reference.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def sandbox() -> ImmutableSandboxedEnvironment:
    """The environment every template (chat or prompt) is compiled in."""
    if jinja2 is None:  # pragma: no cover
        raise ConfigError("chat templates need jinja2: pip install jinja2")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass
class ChatTemplate:
    """A compiled chat template and the special token strings it may write."""

    source: str
    special_tokens: dict[str, str | None]
    where: str = "chat_template"

    def __post_init__(self) -> None:
        try:
            self._template = sandbox().from_string(self.source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise TemplateError(
                f"{self.where}: the chat template does not parse (line {e.lineno}: {e.message})"
            ) from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as text; `add_generation_prompt` appends the opening of the assistant's turn."""
        tokens = {f"{n}_token": t for n, t in self.special_tokens.items() if t is not None}
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **tokens)
        except jinja2.exceptions.TemplateError as e:
            raise TemplateError(f"{self.where}: rendering the chat template failed: {e}") from None

    def encode(self, tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Ids of the rendered conversation; the template has written the special tokens itself."""
        return tokenizer.encode_text(self.render(messages, add_generation_prompt))


def _pick(template, where: str) -> str | None:
    """tokenizer_config.json may hold a list of named templates: the "default" one is used, as the reference."""
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" in named:
            return named["default"]
        raise CheckpointError(f"{where}: chat_template lists {', '.join(map(str, named))} but no 'default' one")
    raise CheckpointError(f"{where}: chat_template is neither a string nor a list of named templates")


def find_chat_template(name_or_path: str) -> tuple[str | None, str]:
    """(the checkpoint's chat template or None, where it was looked for)."""
    path = resolve_model(str(name_or_path))
    if path.suffix.lower() == ".gguf":
        return read_gguf(path).metadata.get("tokenizer.chat_template"), f"{path} (tokenizer.chat_template)"
    for name in ("tokenizer_config.json", "chat_template.json"):
        f = path / name
        if f.is_file():
            try:
                found = _pick(json.loads(f.read_text(encoding="utf-8")).get("chat_template"), str(f))
            except ValueError as e:
                raise CheckpointError(f"{f}: not valid JSON ({e})") from None
            if found is not None:
                return found, str(f)
    jinja_file = path / "chat_template.jinja"  # transformers 5 saves the template beside the config
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), str(jinja_file)
    return None, str(path / "tokenizer_config.json")


def load_chat_template(name_or_path: str, tokenizer: Tokenizer) -> ChatTemplate | None:
    """The checkpoint's chat template with the tokenizer's special tokens, or None when it ships none (a base
    model: prompts are then plain text)."""
    source, where = find_chat_template(name_or_path)
    if source is None:
        return None
    return ChatTemplate(source, {n: tokenizer.special_tokens.get(n) for n in SPECIAL_NAMES}, where)
