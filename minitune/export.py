"""`minitune export`: a trained model directory -> one ONNX file that onnxruntime runs without PyTorch.

The model is loaded with `load_model`, so what is exported is the plain-weight model a run saved in model/ (LoRA
merged, NF4 dequantized). The graph takes `input_ids` and `attention_mask` (int64, (batch, sequence), both axes
dynamic; `token_type_ids` too for BERT-style models with segments) and returns `logits` and `probs` (softmax, or
sigmoid for multi-label), (batch, labels). What a caller needs to turn probabilities into labels rides in the
model's metadata_props: `label_names` (JSON list, in output order), `problem_type`, and for multi-label
`thresholds` (JSON list, one per label: the tuned thresholds the run kept, else its fixed one, as `minitune
predict` applies them). The tokenizer files stay in the model directory: tokenize as minitune does, pad on the right.

Exporter: torch.onnx's TorchScript tracer (`dynamo=False`). The torch.export-based exporter (torch 2.13's
default) stops at the models' data-dependent branches (`bool(attention_mask.all())`: GuardOnDataDependentSymNode).
Tracing records one path through the Python control flow, so the model is traced in the layout every call will take:
padded (the masked attention path, exact for unpadded batches too), first token real (right padding for encoders),
no unpadding (Packing's Python-side lengths would be frozen into the graph). The tests check the file against
minitune on ragged batches of other shapes.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from minitune.checkpoints.atomic import atomic_write
from minitune.checkpoints.load import load_model
from minitune.checkpoints.rundir import MEMBERS, member_model_dirs, model_dir_of
from minitune.checkpoints.runlock import require_finished
from minitune.data.long_text import CHUNK_KEY
from minitune.errors import ConfigError
from minitune.predict import thresholds_for

ONNX_INSTALL = "pip install onnx==1.23.2 (and onnxruntime==1.32.0 to run the file)"


class WithProbabilities(nn.Module):
    """The classifier with its activation: (logits, probabilities)."""

    def __init__(self, model: nn.Module, multi_label: bool):
        super().__init__()
        self.model, self.multi_label = model, multi_label

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        logits = self.model(input_ids, attention_mask, token_type_ids).float()
        return logits, torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)


def input_names(model: nn.Module) -> list[str]:
    """token_type_ids only where the model has more than one segment embedding (BERT); RoBERTa, DistilBERT and the
    decoders read none or only zeros."""
    segments = model.hf_config.get("type_vocab_size", 0) > 1 and model.hf_config.get("model_type") == "bert"
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if segments else [])


def example_inputs(names: list[str], vocab_size: int) -> tuple[torch.Tensor, ...]:
    """Two right-padded rows of different lengths (the traced path must be the padded one)."""
    ids = torch.randint(5, min(vocab_size, 1000), (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    tensors = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(tensors[n] for n in names)


def onnx_metadata(model: nn.Module, model_dir: Path) -> dict[str, str]:
    names = list(model.label_names or [str(i) for i in range(model.hf_config.get("num_labels", 0))])
    problem = model.hf_config.get("problem_type") or "single_label_classification"
    meta = {
        "label_names": json.dumps(names),
        "problem_type": problem,
        "model_type": str(model.hf_config.get("model_type", "")),
        "producer": "minitune export",
        "outputs": "logits, probs (" + ("sigmoid" if problem == "multi_label_classification" else "softmax") + ")",
    }
    if problem == "multi_label_classification":
        meta["thresholds"] = json.dumps([float(t) for t in thresholds_for(model_dir, names, None)])
    if model.hf_config.get(CHUNK_KEY):  # trained on windows of long texts: the graph scores windows, not texts
        meta["long_text_chunk"] = json.dumps(model.hf_config[CHUNK_KEY])
        meta["outputs"] += "; one row per window: a text's logits are the mean of its windows' (data/long_text.py)"
    return meta


# Families whose traced graph would only hold for the traced length, with why.
NOT_EXPORTABLE = {
    "deberta-v2": "DeBERTa's relative-position rows are chosen from the batch's length while tracing, so the ONNX "
    "graph would only run at that length; export BERT, RoBERTa, XLM-R, DistilBERT or decoder models",
}


def exportable(path: Path) -> nn.Module:
    """The trained classifier of a finished run (or a model folder), refused in one line when export cannot write
    it as the run computes it."""
    if not path.exists():
        raise ConfigError(f"`model` {path}: no such directory; pass a finished run's output directory or its model/")
    require_finished(path)
    if (path / MEMBERS).is_file():  # cv, seeds, Recipe-MPR folds: a mean of several models
        first = member_model_dirs(path)[0]
        raise ConfigError(
            f"`model` {path} holds several models whose mean it predicts with; ONNX export writes one: pass one of "
            f"them, e.g. {first}"
        )
    model = load_model(path)
    if model.task_head != "sequence" or not model.head_trained:
        raise ConfigError(
            f"`model` {path}: no trained sequence-classification head there (a base checkpoint or a "
            "multiple-choice model); pass the model/ directory of a classification run"
        )
    if model.hf_config.get("model_type") in NOT_EXPORTABLE:
        raise ConfigError(f"`model` {path}: {NOT_EXPORTABLE[model.hf_config['model_type']]}")
    return model


def export_onnx(model_dir: Path, output: Path, opset: int = 17) -> Path:
    """Write the classifier in `model_dir` to `output` as ONNX; return the path."""
    if importlib.util.find_spec("onnx") is None:
        raise ConfigError(f"`format` onnx needs the onnx package: {ONNX_INSTALL}")
    import onnx  # optional: only this command needs it

    model_dir = model_dir_of(Path(model_dir))  # a run's folder: its model/
    model = exportable(model_dir)
    model.eval()
    model.set_unpadded(False)
    multi = model.hf_config.get("problem_type") == "multi_label_classification"
    names = input_names(model)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {o: {0: "batch"} for o in ("logits", "probs")}
    wrapper = WithProbabilities(model, multi)
    inputs = example_inputs(names, model.hf_config.get("vocab_size", 1000))

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns at each Python bool taken from a tensor (the layout choices described above), and the
            # legacy exporter announces its deprecation: the replacement cannot export these models (see above).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper,
                inputs,
                tmp,
                input_names=names,
                output_names=["logits", "probs"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        proto = onnx.load(tmp)
        for key, value in onnx_metadata(model, model_dir).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    atomic_write(output, write)
    return output
