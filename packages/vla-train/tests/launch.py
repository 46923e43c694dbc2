"""Test launcher: ``python launch.py <vla args>`` (or under torchrun) with the test components registered.

``VLA_TEST_STEP_SLEEP=seconds`` slows every training step, so a test can kill a run mid-way;
``VLA_TEST_CHECKPOINT_SLEEP=seconds`` pauses at each file and directory sync of a checkpoint write, so a
kill often lands in the middle of one.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "support"))

import vla_test_components  # noqa: E402,F401  (registers test_linear / test_mlp)
from vla_train import trainer  # noqa: E402
from vla_train.cli import main  # noqa: E402

delay = float(os.environ.get("VLA_TEST_STEP_SLEEP", "0"))
if delay:
    step = trainer.Trainer.train_step

    def slow_step(self):
        time.sleep(delay)
        return step(self)

    trainer.Trainer.train_step = slow_step

pause = float(os.environ.get("VLA_TEST_CHECKPOINT_SLEEP", "0"))
if pause:
    from vla_train import checkpoint

    def slowly(fn):
        def run(*args, **kwargs):
            time.sleep(pause)
            return fn(*args, **kwargs)

        return run

    checkpoint._write_json = slowly(checkpoint._write_json)
    checkpoint._fsync_dir = slowly(checkpoint._fsync_dir)

sys.exit(main(sys.argv[1:]))
