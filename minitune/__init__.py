"""minitune: a compact, hand-written PyTorch stack for fine-tuning pretrained transformers on text classification.

Public API:
    load_model(name_or_path, num_labels=None, head="sequence" | "multiple_choice", dtype=None, quantize=None)
    load_tokenizer(name_or_path) -> Tokenizer
    save_pretrained(model, dir, label_names=None, problem_type=None); tokenizer.save_pretrained(dir)
    train(task=..., model=..., **settings) -> TrainResult(results, output_dir, model_dir): the command line's run
    Predictor(run_or_model_dir).predict(texts) -> Predictions(labels, probabilities, label_names), as `predict` does
The command line (`minitune` or `python run.py`) is minitune/cli.py.
"""

from minitune.checkpoints.load import load_model, load_tokenizer
from minitune.checkpoints.save import save_pretrained
from minitune.errors import MinituneError
from minitune.predict import Predictor
from minitune.runner import TrainResult, train

__version__ = "0.1.0"
__all__ = ["load_model", "load_tokenizer", "save_pretrained", "train", "TrainResult", "Predictor", "MinituneError"]
