"""A tiny random DeBERTa-v3 written the way the Hub ships v3: transformers' weights + config.json, a SentencePiece
`spm.model` (trained here on GoEmotions' training texts, v3's piece layout: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3) and
tokenizer_config.json, and no tokenizer.json, so minitune must read spm.model itself.

    python -m benchmarks.tiny_deberta /tmp/tiny-deberta-v3
    python run.py --task goemotions --model /tmp/tiny-deberta-v3 --max-train-samples 300 ...

Needs sentencepiece (a test-only dependency) and transformers; minitune itself needs neither.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common


def main(argv: list[str] | None = None) -> Path:
    import sentencepiece as spm
    import torch
    import transformers

    from minitune.data.spm import V3_TOKENIZER_CONFIG, V3_TRAINER_ARGS

    out = Path((argv or sys.argv[1:])[0])
    out.mkdir(parents=True, exist_ok=True)
    data = common.REPO.parent / "shared" / "data" / "goemotions" / "train.tsv"
    texts = [line.split("\t", 1)[0] for line in data.read_text(encoding="utf-8").splitlines()[:20000]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=2000, minloglevel=2, **V3_TRAINER_ARGS
    )
    (out / "spm.model").write_bytes(model.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps(V3_TOKENIZER_CONFIG, indent=2) + "\n")
    torch.manual_seed(0)
    # the pieces plus [MASK], added after them as in the Hub's v3 tokenizers
    shape = common.DEBERTA_SHAPES["deberta-tiny"] | {"vocab_size": 2001}
    config = transformers.DebertaV2Config(**shape, **common.DEBERTA_V3)
    transformers.DebertaV2Model(config).save_pretrained(out)  # a bare encoder, as the Hub's v3 checkpoints
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
