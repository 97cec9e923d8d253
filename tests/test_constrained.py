"""Constrained decoding always yields a valid answer (single label, distinct multi-label lists ending in eos,
option letters), and label scoring equals the sum of per-token log-probs computed by transformers."""

from __future__ import annotations

import pytest
import torch

from minitune.models.constrained import LabelConstraint, continuation, score_labels
from minitune.models.generate import GenerationConfig, generate
from test_generate import EOS, PAD, PROMPTS, pair
from tolerance import assert_close_scaled

# Labels sharing prefixes (5 6 | 5 7 8 | 5 7) and one of a single token: the trie must keep them apart.
LABELS = [[5, 6], [5, 7, 8], [5, 7], [9]]
SEP_LABELS = [[40, 5, 6], [40, 5, 7, 8], [40, 5, 7], [40, 9]]  # "," + label, as split after a label


@pytest.mark.parametrize("name", ["llama", "gemma"])
def test_constrained_single_label_is_always_a_label(name):
    _, ours = pair(name)
    c = LabelConstraint(LABELS, EOS)
    valid = [[*seq, EOS] for seq in LABELS]
    seen = set()
    for seed in range(6):
        gen = GenerationConfig(
            max_new_tokens=c.max_tokens(), do_sample=True, temperature=30.0, seed=seed, eos_token_ids=[EOS]
        )
        for toks in generate(ours, PROMPTS, gen, logits_processor=c):
            assert toks in valid
            seen.add(c.labels(toks)[0])
    assert len(seen) >= 3  # hot sampling visits most labels: the constraint is not stuck on one path
    greedy = generate(ours, PROMPTS, GenerationConfig(max_new_tokens=5, eos_token_ids=[EOS]), logits_processor=c)
    assert all(t in valid for t in greedy)


def test_constrained_multi_label_gives_distinct_labels_then_eos():
    _, ours = pair("qwen2")
    c = LabelConstraint(LABELS, EOS, then=SEP_LABELS)
    lengths = set()
    for seed in range(8):
        gen = GenerationConfig(
            max_new_tokens=c.max_tokens(), do_sample=True, temperature=30.0, seed=seed, eos_token_ids=[EOS]
        )
        for toks in generate(ours, PROMPTS, gen, logits_processor=c):
            assert toks[-1] == EOS
            labels = c.labels(toks)
            assert len(labels) == len(set(labels)) >= 1
            rebuilt = [*LABELS[labels[0]], *(t for i in labels[1:] for t in SEP_LABELS[i]), EOS]
            assert toks == rebuilt
            lengths.add(len(labels))
    assert len(lengths) >= 2


def test_walk_and_parse():
    c = LabelConstraint(LABELS, EOS, then=SEP_LABELS)
    assert c.walk([])[0] == {5, 9}
    assert c.walk([5])[0] == {6, 7}
    assert c.walk([5, 7])[0] == {8, EOS, 40}  # "5 7" is a label and a prefix of another
    assert c.walk([9, 40])[0] == {5}  # label 3 used: "40 9" is not offered again
    assert c.labels([5, 7, 40, 9, EOS]) == [2, 3]
    assert c.labels([5, 7, 8]) == [1]  # cut short after a complete label
    assert c.labels([5]) == []
    letters = LabelConstraint([[65], [66], [67]], EOS)  # multiple choice: option letters
    assert letters.walk([])[0] == {65, 66, 67} and letters.labels([66, EOS]) == [1]


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])
def test_label_scores_equal_reference_token_log_probs(name):
    ref, ours = pair(name)
    got = score_labels(ours, PROMPTS, LABELS, PAD)
    want = torch.zeros(len(PROMPTS), len(LABELS))
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            for j, lab in enumerate(LABELS):
                ids = torch.tensor([p + lab])
                lp = ref(input_ids=ids).logits[0].float().log_softmax(-1)
                want[i, j] = sum(lp[len(p) - 1 + k, t] for k, t in enumerate(lab))
    assert_close_scaled(got, want, atol=1e-5, rtol=1e-5, name="label log-likelihoods")


def test_continuation_splits_as_after_the_prompt():
    from minitune.checkpoints.load import load_tokenizer

    tok = load_tokenizer("smollm2")
    prompt = "<|im_start|>assistant\n"
    for label in ("joy", "anticipation", "B"):
        ids = continuation(tok, prompt, label)
        assert tok.encode_text(prompt) + ids == tok.encode_text(prompt + label)
    after = continuation(tok, "joy", ", love")
    assert tok.decode(after) == ", love" and after != tok.encode_text(",") + tok.encode_text("love")


def test_answer_loss_is_the_reference_causal_lm_loss_on_answer_tokens():
    """Per example, transformers' causal-LM loss on the answer tokens; over a padded batch, the mean of those (each
    example weighs the same whatever its answer's length, so batches split across ranks add up exactly)."""
    from minitune.instruct import IGNORE, AnswerLoss, collate_answers

    ref, ours = pair("llama")
    feats = [
        {"input_ids": [5, 17, 33, 41, 6, EOS], "labels": [IGNORE] * 4 + [6, EOS]},
        {"input_ids": [9, 44, 3, 9, EOS], "labels": [IGNORE] * 3 + [9, EOS]},
        {"input_ids": [9, 44, 12, 7, 8, 9, EOS], "labels": [IGNORE] * 2 + [12, 7, 8, 9, EOS]},  # a longer answer
    ]
    batch = collate_answers(feats, PAD)
    got = AnswerLoss()(ours(batch["input_ids"], batch["attention_mask"]), batch["labels"])
    rows = [ref(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])).loss for f in feats]
    assert_close_scaled(got, torch.stack(rows).mean(), atol=1e-5, rtol=1e-5, name="answer loss")
