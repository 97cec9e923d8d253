"""minitune: a compact, hand-written PyTorch stack for fine-tuning pretrained transformers on text classification."""

__version__ = "0.1.0"
