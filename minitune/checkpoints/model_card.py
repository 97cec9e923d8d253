"""model/README.md: what a saved model is (its base checkpoint, the task it was trained on, its labels, its head) and
how to load it so that it computes what it computed in its run. Which loader does depends on the layout the model
was saved in (checkpoints/save.py): a family's reference head loads in transformers as it is; a mean- or
max-pooled head or a bi-encoder is saved in the sentence-transformers layout, which transformers' classification
classes would load with a fresh, random classifier; the bag-of-embeddings baseline loads in minitune only.
"""

from __future__ import annotations

from pathlib import Path

from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE

KINDS = {"single_label": "single-label classification", MULTI_LABEL: "multi-label classification"}
KINDS[MULTIPLE_CHOICE] = "multiple choice"


def model_card(folder: Path, model, kind: str, label_names: list[str] | None, trained_on: str | None) -> str:
    """The card's text for the model just saved in `folder` (an instruct decoder tuned to answer: generative.json
    beside it)."""
    base = getattr(model, "name_or_path", None) or model.hf_config.get("_name_or_path") or "a checkpoint"
    sentence_layout = (Path(folder) / "modules.json").is_file()
    title = f"{Path(str(base)).name}, fine-tuned with minitune"
    if model.hf_config.get("model_type") == "minitune-ffnn":  # no pretrained weights: trained from scratch
        title, base = "minitune's bag-of-embeddings baseline (ffnn)", "none: trained from random weights"
    lines = [
        f"# {title}",
        "",
        f"- Trained on: {trained_on or 'a minitune run'} ({KINDS.get(kind, kind)})",
        f"- Base checkpoint: {base}",
    ]
    if label_names:
        lines.append(f"- Labels, in order: {', '.join(label_names)}")
    if (Path(folder) / "generative.json").is_file() or getattr(model, "generative", False):
        return "\n".join([*lines, *GENERATIVE]) + "\n"
    lines += [f"- Head: {_head(model, kind, sentence_layout)}", "", "## Load it", "", *_minitune(kind)]
    lines += _elsewhere(model, kind, sentence_layout)
    return "\n".join(lines) + "\n"


GENERATIVE = [
    "- Head: none: an instruct decoder that answers in its chat (generative.json holds the labels, answer mode,",
    "  shots and prompt)",
    "",
    "## Load it",
    "",
    "`minitune predict --model path/to/this/folder --input texts.csv --output answers.csv` asks it as the run did.",
    "transformers' `AutoModelForCausalLM` loads the weights (LoRA merged), but the prompts are minitune's.",
]


def _head(model, kind: str, sentence_layout: bool) -> str:
    if model.hf_config.get("model_type") == "minitune-ffnn":
        return "minitune's bag-of-embeddings baseline"
    if kind == MULTIPLE_CHOICE and getattr(model, "choice_scorer", None) == "bi":
        return "a bi-encoder: options scored by 20 x the cosine of the query's and the option's embeddings"
    if sentence_layout:
        return "a classifier on the mean- or max-pooled tokens (saved in the sentence-transformers layout)"
    return "the family's reference classification head"


def _minitune(kind: str) -> list[str]:
    call = (
        'predictor.predict_choices(["a question"], [["option a", "option b"]])'
        if kind == MULTIPLE_CHOICE
        else 'predictor.predict(["a text to label"])'
    )
    return [
        "With minitune, which predicts as the run did (its tokenizer, max length and thresholds):",
        "",
        "```python",
        "import minitune",
        'predictor = minitune.Predictor("path/to/this/folder")',
        f"print({call})",
        "```",
        "",
    ]


def _elsewhere(model, kind: str, sentence_layout: bool) -> list[str]:
    """Where else it loads with the same outputs, and where it does not."""
    if model.hf_config.get("model_type") == "minitune-ffnn":
        return ["Only minitune loads this model (it is not a transformers architecture)."]
    if sentence_layout:
        return [
            "With sentence-transformers, whose modules pool as the run did: "
            "`SentenceTransformer('path/to/this/folder').encode(texts)` returns "
            + ("the embeddings." if kind == MULTIPLE_CHOICE else "the classifier's logits."),
            "",
            "Not with transformers' `AutoModelForSequenceClassification` or `pipeline()`: they would load the "
            "encoder with a fresh, random classifier on another vector. `minitune export --format onnx` writes a "
            "graph that runs anywhere.",
        ]
    if kind == MULTIPLE_CHOICE:
        return ["With transformers: `AutoModelForMultipleChoice.from_pretrained('path/to/this/folder')`."]
    thresholds = (
        " It gives every label's probability; apply the per-label thresholds of thresholds.json to decide."
        if kind == MULTI_LABEL
        else ""
    )
    return [
        "With transformers, the same logits: `AutoModelForSequenceClassification.from_pretrained(...)`, or "
        "`pipeline('text-classification', model='path/to/this/folder', top_k=None)`." + thresholds,
    ]
