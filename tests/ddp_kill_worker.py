"""A training process that is killed: started by torchrun in tests/test_distributed.py.

Every process trains as ``python -m storyteller train`` would; rank 0 kills itself with
SIGKILL right after writing the first epoch's ``last.pth`` (the way a Kaggle session dies),
and torchrun then takes the other processes down.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_kill_worker.py DATA OUT
"""

import os
import signal
import sys

from storyteller import pipeline
from storyteller.config import TrainConfig
from storyteller.training.distributed import session

# The test's training recipe (the same flags it passes to the `train` command).
CONFIG = TrainConfig(num_epochs=3, batch_size=32, patience=10)
MODEL = {"decoder": "lstm", "embed_size": 32, "hidden_size": 64}


def die_after_first_epoch(record: dict) -> None:
    if record["epoch"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    data, out = sys.argv[1:3]
    with session("cpu") as (context, device):
        pipeline.train_step(
            data, out, CONFIG, MODEL, device=device, on_epoch=die_after_first_epoch, context=context
        )
