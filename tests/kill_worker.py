"""Runs `minitune` as a user would, and kills itself (SIGKILL: no cleanup, no `finally`) at the K-th file event:
an os.replace (every atomic write ends in one) or a shutil.rmtree. With K = 0 it kills nothing and logs every
event's path, one per line, to the file named by $KILL_LOG, so a test can pick the events of a run's finish.
With $KILL_MATCH set, only the events whose path contains it are counted (the K-th checkpoint of a sweep's trial).

    python tests/kill_worker.py K minitune-args...
"""

import os
import shutil
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    kill_at, argv = int(sys.argv[1]), sys.argv[2:]
    log, match = os.environ.get("KILL_LOG"), os.environ.get("KILL_MATCH")
    count = [0]

    def event(path) -> None:
        if match and match not in str(path):
            return
        count[0] += 1
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{path}\n")
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    replace, rmtree = os.replace, shutil.rmtree

    def killing_replace(src, dst, *a, **k):
        event(dst)
        return replace(src, dst, *a, **k)

    def killing_rmtree(path, *a, **k):
        event(path)
        return rmtree(path, *a, **k)

    os.replace, shutil.rmtree = killing_replace, killing_rmtree
    from minitune.cli import main as minitune

    return minitune(argv)


if __name__ == "__main__":
    sys.exit(main())
