"""Protocols: how many models a command trains, on which splits, and how their scores combine. Each is built on the
single fine-tune (finetune.py): holdout.py (one model, the default), folds.py (the fold loop, Recipe-MPR's 5 folds),
cv.py (k-fold cross-validation), seeds.py (seed ensembles), sweep.py (phases of trials), distill.py (a student and
its teacher), compare.py (one table of finished runs). Only the command line (cli.py, runner.py) imports them."""
