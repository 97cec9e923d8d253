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

    out = Path((argv or sys.argv[1:])[0])
    out.mkdir(parents=True, exist_ok=True)
    data = common.REPO.parent / "shared" / "data" / "goemotions" / "train.tsv"
    texts = [line.split("\t", 1)[0] for line in data.read_text(encoding="utf-8").splitlines()[:20000]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="unigram",
        vocab_size=2000,
        pad_id=0,
        pad_piece="[PAD]",
        bos_id=1,
        bos_piece="[CLS]",
        eos_id=2,
        eos_piece="[SEP]",
        unk_id=3,
        unk_piece="[UNK]",
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    (out / "spm.model").write_bytes(model.getvalue())
    special = {f"{n}_token": f"[{n.upper()}]" for n in ("pad", "unk", "cls", "sep", "mask")}
    tok_config = {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "split_by_punct": False}
    tok_config |= special | {"bos_token": "[CLS]", "eos_token": "[SEP]", "model_max_length": 512, "vocab_type": "spm"}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(
        vocab_size=2001,  # the pieces plus [MASK], added after them as in the Hub's v3 tokenizers
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        relative_attention=True,
        pos_att_type="p2c|c2p",
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        position_buckets=256,
        position_biased_input=False,
        type_vocab_size=0,
        layer_norm_eps=1e-7,
        pad_token_id=0,
    )
    transformers.DebertaV2Model(config).save_pretrained(out)  # a bare encoder, as the Hub's v3 checkpoints
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
