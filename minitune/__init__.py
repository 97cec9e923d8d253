"""minitune: a compact, hand-written PyTorch stack for fine-tuning pretrained transformers on text classification.

Public API:
    load_model(name_or_path, num_labels=None, head="sequence" | "multiple_choice", dtype=None, quantize=None)
    load_tokenizer(name_or_path) -> Tokenizer
    model.save_pretrained(dir), tokenizer.save_pretrained(dir)
"""

from .errors import MinituneError
from .modeling import load_model, save_pretrained

__version__ = "0.1.0"
__all__ = ["load_model", "load_tokenizer", "save_pretrained", "MinituneError"]


def load_tokenizer(name_or_path):
    """The checkpoint's tokenizer (tokenizer.json + its special tokens), or the one built from a GGUF file."""
    from .hub import resolve_model
    from .tokenizer import Tokenizer

    path = resolve_model(str(name_or_path))
    if path.suffix.lower() == ".gguf":
        from .gguf import read_gguf
        from .gguf_llama import gguf_tokenizer

        tok, special = gguf_tokenizer(read_gguf(path))
        return Tokenizer(tok, **special)
    return Tokenizer.from_dir(path)
