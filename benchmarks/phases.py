#!/usr/bin/env python
"""Run one stack of the end-to-end comparison with its time split into phases, measured the same way for both.

    python benchmarks/phases.py minitune -- --task humor --model minilm ... --output-dir OUT
    python benchmarks/phases.py hf_trainer -- --task humor --model minilm ... --output-dir OUT [--group-by-length]

Each stack's own functions for a phase are wrapped with one exclusive timer (a call's time minus the time of the
timed calls inside it), so nested work counts once, in the innermost phase:
- tokenize: turning examples into token ids;
- train: the training loop, less the evaluations and saves it makes;
- evaluate: forward passes over dev and the metrics on them;
- save: checkpoints, the best weights kept and restored, the final model folder;
- load: the model's weights and the data files read.
What no phase claims (interpreter start, imports, building the stack, the report) is start-up; e2e.py computes it as
the process's wall time to results.json minus the phases, so it is counted the same way for both stacks. Each phase
is also timed in CPU seconds of the process (time.process_time), which a machine shared with other jobs does not
inflate; start-up in CPU seconds is then the process's CPU time (os.wait4) minus the CPU phases.
The split is written to OUTPUT_DIR/phases.json when the stack returns.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# phase -> "module:attribute" (a function) or "module:Class.method"; every name that a caller looks up is wrapped,
# so a function imported by name into another module is listed there too.
TARGETS = {
    "minitune": {
        "tokenize": ["minitune.finetune:tokenize", "minitune.experiments.folds:tokenize"],
        "train": ["minitune.finetune:fit"],
        "evaluate": ["minitune.finetune:predict_logits", "minitune.eval.scoring:predict_logits"],
        "save": [
            "minitune.train.loop:save_checkpoint",
            "minitune.train.loop:_save_best",
            "minitune.train.loop:_restore_best",
            "minitune.finetune:save_model_dir",
            "minitune.eval.finish:write_example_predictions",
            "minitune.eval.finish:write_prediction_records",
        ],
        "load": ["minitune.finetune:build_model", "minitune.inputs:prepare"],
    },
    "hf_trainer": {
        "tokenize": ["hf_trainer_baseline:encode"],
        "train": ["transformers.trainer:Trainer.train"],
        "evaluate": ["transformers.trainer:Trainer.evaluate", "transformers.trainer:Trainer.predict"],
        "save": [
            "transformers.trainer:Trainer._save_checkpoint",
            "transformers.trainer:Trainer.save_model",
            "transformers.trainer:Trainer._load_best_model",
        ],
        "load": [
            "hf_trainer_baseline:build_model",
            "hf_trainer_baseline:load_data",
            "transformers:AutoTokenizer.from_pretrained",
        ],
    },
}


class PhaseClock:
    """Exclusive time per phase: each timed call adds its own time less that of the timed calls inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}  # wall
        self.cpu_seconds: dict[str, float] = {}  # this process's CPU time: what a loaded machine does not inflate
        self.calls: dict[str, int] = {}
        self._inner: list[tuple[float, float]] = []  # per open timed call: (wall, CPU) of timed calls inside it

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            self._inner.append((0.0, 0.0))
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                took, cpu = time.perf_counter() - t0, time.process_time() - c0
                inner, inner_cpu = self._inner.pop()
                self.seconds[phase] = self.seconds.get(phase, 0.0) + took - inner
                self.cpu_seconds[phase] = self.cpu_seconds.get(phase, 0.0) + cpu - inner_cpu
                self.calls[phase] = self.calls.get(phase, 0) + 1
                if self._inner:
                    w, c = self._inner[-1]
                    self._inner[-1] = (w + took, c + cpu)

        timed.__wrapped__ = fn
        return timed


def install(clock: PhaseClock, targets: dict[str, list[str]]) -> None:
    for phase, names in targets.items():
        for name in names:
            module_name, attr = name.split(":")
            owner = importlib.import_module(module_name)
            *path, last = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            fn = inspect.getattr_static(owner, last)
            if isinstance(fn, classmethod):
                setattr(owner, last, classmethod(clock.wrap(phase, fn.__func__)))
            else:
                setattr(owner, last, clock.wrap(phase, getattr(owner, last)))


def main(argv: list[str]) -> int:
    t_start = time.perf_counter()
    stack, rest = argv[0], argv[1:]
    rest = rest[1:] if rest[:1] == ["--"] else rest
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    clock = PhaseClock()
    install(clock, TARGETS[stack])
    if stack == "minitune":
        from minitune.cli import main as entry
    else:
        from hf_trainer_baseline import main as entry
    code = entry(rest)
    out = Path(rest[rest.index("--output-dir") + 1])
    doc = {
        "stack": stack,
        "seconds": {k: round(v, 2) for k, v in clock.seconds.items()},
        "cpu_seconds": {k: round(v, 2) for k, v in clock.cpu_seconds.items()},
        "calls": clock.calls,
        "process_seconds_after_start": round(time.perf_counter() - t_start, 2),
    }
    (out / "phases.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return code or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
