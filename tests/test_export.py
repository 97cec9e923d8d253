"""`minitune export --format onnx`: onnxruntime gives minitune's probabilities (1e-5) on padded, ragged batches of
other shapes than the traced one, for every encoder family and a decoder; labels and thresholds ride in metadata."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

import minitune
from minitune.adapters.lora import apply_adapters
from minitune.cli import main
from minitune.export import export_onnx
from test_adapters import lora_settings, perturb_lora, tiny_llama
from test_decoder import hub
from test_encoders import CONFIGS as ENCODER_CONFIGS

# The tiny random configs of the parity tests: every encoder family, and Llama.
CONFIGS = {
    **ENCODER_CONFIGS,
    "modernbert": lambda: transformers.ModernBertConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=3,
        num_attention_heads=4,
        local_attention=16,  # wider than the traced rows (8), shorter than the longest batch below (20)
        pad_token_id=0,
        bos_token_id=1,
        cls_token_id=1,
        eos_token_id=2,
        sep_token_id=2,
    ),
    "llama": lambda: transformers.LlamaConfig(**{k: v for k, v in hub("llama").items() if k != "model_type"}),
}
LABELS = ["anger", "joy", "sadness"]


def batch(pad_id: int, lengths, left: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.full((len(lengths), t), pad_id)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        span = slice(t - n, t) if left else slice(0, n)
        ids[i, span] = torch.randint(3, 99, (n,), generator=g)  # both vocabularies hold 99
        mask[i, span] = 1
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    return ids, mask, types * mask


def saved_model(tmp_path, model_type: str, multi_label: bool = False):
    torch.manual_seed(1)
    cfg = CONFIGS[model_type]()
    cfg.id2label = dict(enumerate(LABELS))
    cfg.label2id = {n: i for i, n in enumerate(LABELS)}
    if multi_label:
        cfg.problem_type = "multi_label_classification"
    transformers.AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_onnxruntime_probabilities_equal_minitune(tmp_path, model_type):
    model_dir = saved_model(tmp_path, model_type)
    path = export_onnx(model_dir, tmp_path / "model.onnx")
    ours = minitune.load_model(model_dir).eval()  # unpadded execution as minitune predicts: a different path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask"] + (["token_type_ids"] if model_type == "bert" else [])
    pad = ours.hf_config["pad_token_id"]
    shapes = [dict(lengths=(11, 3, 7, 11, 1)), dict(lengths=(20, 2, 9)), dict(lengths=(4,)), dict(lengths=(6, 6))]
    if model_type == "llama":
        shapes.append(dict(lengths=(9, 2, 5), left=True))
    for shape in shapes:
        ids, mask, types = batch(pad, **shape)
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
        logits, probs = session.run(["logits", "probs"], {n: feeds[n] for n in names})
        with torch.no_grad():
            expected = ours(ids, mask, types if model_type == "bert" else None)
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(probs, expected.softmax(-1).numpy(), atol=1e-5, rtol=0)
        assert probs.shape == (len(shape["lengths"]), 3)


def test_qlora_model_exports_merged_and_dequantized(tmp_path):
    """A QLoRA-trained decoder, saved as a run saves model/, runs in onnxruntime as it ran in minitune."""
    _, path = tiny_llama(tmp_path)
    model = minitune.load_model(path, quantize="nf4")
    apply_adapters(model, lora_settings())
    perturb_lora(model)  # as if trained: adapters that change the output
    ids, mask, _ = batch(0, (9, 2, 5))
    with torch.no_grad():
        expected = model.eval()(ids, mask).softmax(-1).numpy()
    minitune.save_pretrained(model, tmp_path / "model")
    session = ort.InferenceSession(str(export_onnx(tmp_path / "model", tmp_path / "m.onnx")))
    probs = session.run(["probs"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)


def test_metadata_holds_labels_and_saved_thresholds(tmp_path):
    model_dir = saved_model(tmp_path, "bert", multi_label=True)
    per_label = {"anger": 0.35, "joy": 0.6, "sadness": 0.2}
    (model_dir / "thresholds.json").write_text(json.dumps({"threshold": 0.3, "per_label": per_label, "use": "tuned"}))
    assert main(["export", "--model", str(model_dir), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["label_names"]) == LABELS
    assert json.loads(meta["thresholds"]) == [0.35, 0.6, 0.2]
    assert meta["problem_type"] == "multi_label_classification"
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    ids, mask, types = batch(0, (5, 2))
    logits, probs = session.run(
        None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    )
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-6)  # sigmoid, not softmax
    # a model trained on windows of long texts says so, with its windows
    hf = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(hf | {"minitune_chunk": {"max_length": 64, "overlap": 16}}))
    assert main(["export", "--model", str(model_dir), "--format", "onnx", "--output", str(tmp_path / "w.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "w.onnx")).metadata_props}
    assert json.loads(meta["long_text_chunk"]) == {"max_length": 64, "overlap": 16} and "per window" in meta["outputs"]


def test_export_of_a_base_checkpoint_is_one_clear_error(tmp_path, capsys):
    torch.manual_seed(0)
    transformers.BertModel(CONFIGS["bert"]()).save_pretrained(tmp_path / "base")
    capsys.readouterr()  # transformers' own progress output
    assert main(["export", "--model", str(tmp_path / "base"), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the load's log line
    assert err.startswith(f"error: --model {tmp_path / 'base'}: no trained sequence-classification head")
    assert not (tmp_path / "m.onnx").exists()


def test_deberta_export_is_refused_in_one_line_not_written_broken(tmp_path, capsys):
    from test_deberta import TINY as DEBERTA_TINY
    from test_deberta import VARIANTS

    cfg = transformers.DebertaV2Config(**{**DEBERTA_TINY, **VARIANTS["v3"]})
    cfg.id2label, cfg.label2id = dict(enumerate(LABELS)), {n: i for i, n in enumerate(LABELS)}
    transformers.DebertaV2ForSequenceClassification(cfg).save_pretrained(tmp_path / "deberta")
    assert main(["export", "--model", str(tmp_path / "deberta"), "--output", str(tmp_path / "d.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: --model {tmp_path / 'deberta'}: DeBERTa's relative-position rows")
    assert not (tmp_path / "d.onnx").exists()
