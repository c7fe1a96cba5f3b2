"""Every file and folder of a run folder, named once, with the step that writes it and who
reads it back. A run folder (``--out``, ``/kaggle/working``) is how the steps, the notebooks,
the app and the Hub tools talk to each other. Nothing here imports torch: the command line
reads these names before any heavy import.

Layout::

    features/features.npy, features/features.json   cached image features + index
    splits.json                                      train/val/test image names
    vocab.pkl                                        the vocabulary (plain data)
    best_model.pth, last.pth                         checkpoints (best by val loss; resume)
    history.json, loss_curve.png                     training curves
    metrics.json, test_captions.json, caption_grid.png, attention_maps/   evaluation
    baseline.json                                    most-frequent-caption baseline scores
    data_examples.png, best_examples.png, worst_examples.png   notebook figures
    story.json, hub_model/, space/                   notebook 05's story and dry runs
    .storyteller.lock                                who is writing the folder
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_OUT = "outputs"  # the run folder when none is named
# Written by the features step (notebook 01); read by training, evaluation, the app's example
# photos, and every step run without --data (the index names the dataset).
FEATURES_DIR = "features"
FEATURES_FILE = "features.npy"
INDEX_FILE = "features.json"  # encoder, layout, image names, image folder
# Written by the vocab step (notebook 02); read by training, evaluation, captioning, the app.
SPLITS_FILE = "splits.json"
VOCAB_FILE = "vocab.pkl"
# Written by train (notebook 03): last.pth every epoch (for --resume), best_model.pth at the
# best validation loss (read by evaluation, captioning, the app, deploy and push).
LAST_CHECKPOINT = "last.pth"
BEST_CHECKPOINT = "best_model.pth"
HISTORY_FILE = "history.json"  # per-epoch losses, for the notebooks' training table
LOSS_CURVE_FILE = "loss_curve.png"
# Written by evaluate (notebook 04); read by the notebooks and the Hub model card.
METRICS_FILE = "metrics.json"
TEST_CAPTIONS_FILE = "test_captions.json"  # every test image's references and captions
GRID_FILE = "caption_grid.png"
ATTENTION_MAPS_DIR = "attention_maps"  # where an attention decoder looked, one figure a photo
BASELINE_FILE = "baseline.json"  # the most-frequent-caption baseline's scores
DATA_EXAMPLES_FILE = "data_examples.png"  # notebook 01 (report.dataset_overview)
HUB_MODEL_DIR = "hub_model"  # notebook 05's dry runs, pushed by hand
SPACE_DIR = "space"
LOCK_FILE = ".storyteller.lock"  # who is writing the folder (storyteller.runlock)

FEATURES_INDEX = f"{FEATURES_DIR}/{INDEX_FILE}"
FEATURES_ARRAY = f"{FEATURES_DIR}/{FEATURES_FILE}"

#: Folders with atomically written files of their own (the lock cleans them too).
ARTEFACT_SUBFOLDERS = (FEATURES_DIR, ATTENTION_MAPS_DIR)
#: What a later Kaggle session copies from an earlier one, in the order the notebooks write it.
RUN_ARTEFACTS = (
    FEATURES_INDEX,
    FEATURES_ARRAY,
    SPLITS_FILE,
    VOCAB_FILE,
    LAST_CHECKPOINT,
    BEST_CHECKPOINT,
    HISTORY_FILE,
    LOSS_CURVE_FILE,
    METRICS_FILE,
    TEST_CAPTIONS_FILE,
    BASELINE_FILE,
)
#: What ``train`` writes, ``last.pth`` first: the order a fresh run removes an earlier run's
#: in, so a stop halfway leaves nothing to resume from.
TRAINING_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, HISTORY_FILE, LOSS_CURVE_FILE)
#: Files only a run folder has (a repository checkout has a vocab.pkl, but none of these).
RUN_MARKERS = (FEATURES_INDEX, SPLITS_FILE, LAST_CHECKPOINT, BEST_CHECKPOINT)


class RunPaths:
    """Where each artefact of a run lives inside its folder ``out``."""

    def __init__(self, out: Path):
        self.out = out
        self.features = out / FEATURES_DIR
        self.features_index = out / FEATURES_INDEX
        self.splits = out / SPLITS_FILE
        self.vocab = out / VOCAB_FILE
        self.checkpoint = out / BEST_CHECKPOINT
        self.last_checkpoint = out / LAST_CHECKPOINT
        self.history = out / HISTORY_FILE
        self.metrics = out / METRICS_FILE
        self.test_captions = out / TEST_CAPTIONS_FILE
        self.baseline = out / BASELINE_FILE
