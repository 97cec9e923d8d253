"""Paraphrases of training texts written by an instruct decoder, for `augment` paraphrase.

Each text goes to the decoder in its own chat format (data/chat.py) under one fixed instruction: say the same thing
in other words, keeping the meaning and the tone, and answer with the paraphrase only. Generation is
models/generate.py's KV-cached loop over left-padded batches; copy k of a text is sampled (temperature 0.8, top-p
0.95) from a generator of its own, seeded from its cache key, so a paraphrase is the same whichever texts share its
batch or came from the cache before it. The answer is cleaned (a "Paraphrase:" lead, enclosing quotes, commentary
after a blank line); an empty answer, or one the token budget (twice the text's tokens plus 16, at most 256) cut
before the end of the turn, gives the original text back instead. Those are counted and logged.

Why a cache: SmolLM2-135M on one CPU thread took 3-4 s per HaHackathon text (8,000 in its train split), and a
rerun (another learning rate, another loss, a resumed run) wants the same paraphrases, so each is written once. The
cache is a JSONL file (`paraphrase_cache`, by default $XDG_CACHE_HOME/minitune/paraphrases/<model>.jsonl, or under
~/.cache), one line per paraphrase, appended and flushed batch by batch: an interrupted run keeps what it wrote.
A torn last line (a crash mid-write) is ignored and cut off before the next append; a line that is not JSON or lacks
a field is skipped with a warning and written again. When every paraphrase asked for is in the cache the decoder is
not loaded.

The key of a line is a hash of (model identity, PROMPT_VERSION, seed, text, k). The model identity is its resolved
location with the name, size and modification time of its config and weight files, so retrained weights at the same
path are not mistaken for the old ones. PROMPT_VERSION changes with the instruction or the sampling settings. The
seed is in the key so that the same call gives the same paraphrases whatever the cache already held. A line keeps
the raw answer and whether the turn ended; cleaning happens on reading, so a better rule needs no new generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minitune.checkpoints.hub import resolve_model
from minitune.checkpoints.load import load_model, load_tokenizer, model_type_of
from minitune.data.chat import ChatTemplate, load_chat_template
from minitune.data.readers import DataWarning
from minitune.data.tokenizer import Tokenizer
from minitune.errors import ConfigError, MinituneError, ParameterError
from minitune.models.decoder import MODEL_TYPES as DECODER_TYPES
from minitune.models.generate import GenerationConfig, generate, top_p_filter

log = logging.getLogger("minitune")

PROMPT_VERSION = 1  # bump with any change to INSTRUCTION, the sampling settings or the token budget
INSTRUCTION = (
    "Rewrite the following text in different words. Keep its meaning and its tone. Reply with the rewritten text "
    "only, no explanation.\n\n{text}"
)
TEMPERATURE, TOP_P = 0.8, 0.95
MAX_NEW_TOKENS = 256
BATCH_SIZE = 8
_WEIGHT_FILES = (".safetensors", ".bin", ".gguf", ".json")
# A lead the model writes before the paraphrase itself: "Paraphrase:", "Here is a rephrased version:", "Sentence:".
_LEAD = re.compile(
    r"^[^\n:]{0,60}?\b(?:paraphras|rephras|rewrit|reword)\w*[^\n:]{0,30}:\s*"
    r"|^\s*(?:new\s+|rewritten\s+)?(?:text|sentence|version)\s*:\s*",
    re.I,
)
_QUOTES = {('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u00ab", "\u00bb"), ("`", "`")}


@dataclass(frozen=True)
class _Job:
    """One paraphrase to write: copy k of a text, under its cache key."""

    key: str
    text: str
    k: int


def paraphrases(
    texts: list[str], model: str, copies: int, seed: int, cache: str | None, device: torch.device | None = None
) -> list[list[str]]:
    """`copies` paraphrases of each text, in the texts' order, from the cache or written by `model` (an instruct
    decoder: a name, alias, directory or .gguf) on `device` (default: cuda when there is one, else cpu)."""
    if copies < 1:
        raise ParameterError(f"`augment_copies` must be at least 1, got {copies}")
    if not texts:
        return []
    path = _cache_file(model, cache)
    identity = _model_identity(model)
    keys = [[_key(identity, seed, text, k) for k in range(copies)] for text in texts]
    found = _read_cache(path)
    jobs = {key: _Job(key, text, k) for text, row in zip(texts, keys) for k, key in enumerate(row) if key not in found}
    log.info("paraphrases: %d of %d in %s", len(keys) * copies - len(jobs), len(keys) * copies, path)
    if jobs:
        found.update(_write_paraphrases(list(jobs.values()), model, path, device))
    return _answers(texts, keys, found)


def _cache_file(model: str, cache: str | None) -> Path:
    """The cache named by `paraphrase_cache`, else one per model in the user cache directory."""
    if cache:
        path = Path(cache).expanduser()
    else:
        root = os.environ.get("XDG_CACHE_HOME")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(model)).strip("-.")[-80:] or "model"
        path = (Path(root).expanduser() if root else Path.home() / ".cache") / "minitune" / "paraphrases"
        path = path / f"{slug}.jsonl"
    if path.is_dir():
        raise ConfigError(
            f"`paraphrase_cache` {path} is a directory: name a file in it, e.g. {path / 'paraphrases.jsonl'}"
        )
    return path


def _model_identity(model: str) -> str:
    try:
        path = resolve_model(str(model))
    except MinituneError as e:
        raise ConfigError(f"`paraphrase_model` {model}: {e}") from None
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_FILES)
    return json.dumps([str(path), [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]])


def _key(identity: str, seed: int, text: str, k: int) -> str:
    blob = json.dumps([identity, PROMPT_VERSION, seed, text, k], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------- the cache file


def _read_cache(path: Path) -> dict[str, dict]:
    """key -> line of every well-formed line; a torn last line is ignored, malformed ones skipped with a warning."""
    if not path.is_file():
        return {}
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise ConfigError(f"`paraphrase_cache` {path}: cannot read it ({e.strerror}): check the path") from None
    if lines.pop():  # what follows the last newline: a line a crash cut short
        log.info("%s: ignored a torn last line (an interrupted write); it is written again", path)
    found, bad = {}, []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if _well_formed(line):
            found[line["key"]] = line
        else:
            bad.append(n)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        warnings.warn(
            f"{path}: skipped {len(bad)} malformed cache lines (lines {shown}); what they held is written again "
            "(delete them to silence this warning)",
            DataWarning,
            stacklevel=3,
        )
    return found


def _well_formed(line) -> bool:
    return (
        isinstance(line, dict)
        and isinstance(line.get("key"), str)
        and isinstance(line.get("answer"), str)
        and isinstance(line.get("ended"), bool)
    )


def _open_for_append(path: Path):
    """The cache opened for appending, a torn last line cut off first so that the next line starts on its own."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            size = f.tell()
        if size:
            data = path.read_bytes()
            if not data.endswith(b"\n"):
                with path.open("r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        return path.open("a", encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"`paraphrase_cache` {path}: cannot write it ({e.strerror}): point `paraphrase_cache` at a writable file"
        ) from None


# ---------------------------------------------------------------------------------------------- generation


def check_paraphrase_model(model: str) -> None:
    """`paraphrase_model` names a decoder (read from its config alone): checked before a run writes anything."""
    try:
        model_type = model_type_of(model)[1]
        if model_type not in DECODER_TYPES:
            raise ConfigError(f"model_type {model_type or 'unknown'} is not a decoder ({', '.join(DECODER_TYPES)})")
    except MinituneError as e:
        raise ConfigError(
            f"`paraphrase_model` {model}: {e}: use an instruct decoder, e.g. `paraphrase_model` smollm2"
        ) from None


def _load(model: str, device: torch.device) -> tuple[torch.nn.Module, Tokenizer, ChatTemplate]:
    """The decoder as a causal LM, its tokenizer and chat template; one `paraphrase_model` error if it is none."""
    check_paraphrase_model(model)
    try:
        tok = load_tokenizer(model)
        chat = load_chat_template(model, tok)
        if chat is None:
            raise ConfigError("it has no chat template, so it is not an instruct model")
        dtype = torch.bfloat16 if device.type == "cuda" else None
        lm = load_model(model, head="causal_lm", dtype=dtype).to(device)
    except MinituneError as e:
        raise ConfigError(
            f"`paraphrase_model` {model}: {e}: use an instruct decoder, e.g. `paraphrase_model` smollm2"
        ) from None
    return lm, tok, chat


def _end_ids(lm, tok: Tokenizer) -> list[int]:
    """Tokens that end the answer: the tokenizer's eos (an instruct model's end of turn) and config.json's."""
    declared = lm.hf_config.get("eos_token_id")
    declared = declared if isinstance(declared, list) else [declared]
    ids = [i for i in [tok.eos_token_id, *declared] if i is not None]
    if not ids:
        raise ConfigError(f"`paraphrase_model` {lm.name_or_path}: names no eos token to end an answer")
    return list(dict.fromkeys(ids))


class _RowSampler:
    """A logits processor that samples each row from its own generator and returns logits whose argmax is that
    sample: generate() then takes it greedily, and a row's tokens do not depend on the other rows of its batch."""

    def __init__(self, seeds: list[int]):
        self.seeds, self.rngs = seeds, None

    def __call__(self, logits: torch.Tensor, new: list[list[int]]) -> torch.Tensor:
        if self.rngs is None:
            self.rngs = [torch.Generator(device=logits.device).manual_seed(s) for s in self.seeds]
        probs = top_p_filter(logits / TEMPERATURE, TOP_P).softmax(-1)
        picks = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.rngs)])
        return torch.full_like(logits, float("-inf")).scatter(-1, picks[:, None], 0.0)


def _write_paraphrases(jobs: list[_Job], model: str, path: Path, device: torch.device | None) -> dict[str, dict]:
    """Generate every job, appending each batch's lines to the cache as it finishes; key -> line."""
    check_paraphrase_model(model)  # before the cache is created: a wrong model leaves no empty file behind
    out = _open_for_append(path)  # before loading: a bad path fails at once, not after the model loaded
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with out:
        lm, tok, chat = _load(model, device)
        ends, pad = _end_ids(lm, tok), tok.pad_token_id
        pad = ends[0] if pad is None else pad
        prompts = [chat.encode(tok, [{"role": "user", "content": INSTRUCTION.format(text=j.text)}]) for j in jobs]
        budgets = [min(MAX_NEW_TOKENS, 2 * len(tok.encode_text(j.text)) + 16) for j in jobs]
        order = sorted(range(len(jobs)), key=lambda i: (len(prompts[i]), i))  # alike lengths: little padding
        left = Counter(j.text for j in jobs)  # copies still to write, for a progress bar counted in texts
        written: dict[str, dict] = {}
        with tqdm(total=len(left), unit="text", desc="paraphrasing") as bar:
            for start in range(0, len(order), BATCH_SIZE):
                idx = order[start : start + BATCH_SIZE]
                gen = GenerationConfig(
                    max_new_tokens=max(budgets[i] for i in idx), eos_token_ids=ends, pad_token_id=pad
                )
                sampler = _RowSampler([int(jobs[i].key[:15], 16) for i in idx])
                new = generate(lm, [prompts[i] for i in idx], gen, logits_processor=sampler)
                lines = [_line(jobs[i], tok, tokens[: budgets[i]], ends) for i, tokens in zip(idx, new)]
                out.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
                out.flush()
                written.update((line["key"], line) for line in lines)
                left.subtract(jobs[i].text for i in idx)
                bar.update(sum(left[t] == 0 for t in {jobs[i].text for i in idx}))
    return written


def _line(job: _Job, tok: Tokenizer, tokens: list[int], ends: list[int]) -> dict:
    # Cut at the row's own budget, not the batch's: the answer must not depend on the batch it was written in.
    ended = any(t in ends for t in tokens)
    answer = tok.decode([t for t in tokens if t not in ends], skip_special_tokens=True)
    return {"key": job.key, "k": job.k, "text": job.text, "answer": answer, "ended": ended}


# ---------------------------------------------------------------------------------------------- answers


def _answers(texts: list[str], keys: list[list[str]], found: dict[str, dict]) -> list[list[str]]:
    """The cleaned paraphrases; the original text where the answer was empty or cut, counted in the log."""
    result, empty, cut, same = [], 0, 0, 0
    for text, row in zip(texts, keys):
        mine = []
        for key in row:
            line = found[key]
            answer = _clean(line["answer"], text) if line["ended"] else ""
            empty += line["ended"] and not answer
            cut += not line["ended"]
            same += answer.strip().lower() == text.strip().lower()
            mine.append(answer or text)
        result.append(mine)
    total = len(texts) * len(keys[0])
    if empty or cut:
        log.warning(
            "paraphrases: %d of %d are the original text instead (%d empty answers, %d cut by the token budget)",
            empty + cut,
            total,
            empty,
            cut,
        )
    if same:
        log.info("paraphrases: %d of %d answers repeat their text unchanged", same, total)
    return result


def _clean(answer: str, text: str) -> str:
    """The paraphrase without a lead ("Paraphrase:"), enclosing quotes, or commentary after a blank line (unless
    the text itself has paragraphs)."""
    answer = _LEAD.sub("", answer.strip(), count=1).strip()
    if "\n\n" not in text.strip():
        answer = answer.split("\n\n")[0].strip()
    while len(answer) >= 2 and (answer[0], answer[-1]) in _QUOTES and (text[:1], text[-1:]) != (answer[0], answer[-1]):
        answer = answer[1:-1].strip()
    return answer
