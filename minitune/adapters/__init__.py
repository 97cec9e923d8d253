"""Adapters on a loaded model: LoRA (lora.py), its files in peft's layout (peft_format.py), NF4 base weights for QLoRA
(nf4.py), and the export that merges them back into plain Hub weights (merge.py)."""
