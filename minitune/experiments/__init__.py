"""Protocols built from single runs: one model trained and selected on dev (trial.py), Recipe-MPR's fold protocol
(folds.py)."""
