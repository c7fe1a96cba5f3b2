"""Every file and folder of a run folder, named once.

A run folder (``--out``, ``/kaggle/working``) is how the steps talk to each other: each step
writes its artefacts there and the later steps, the notebooks, the app and the Hub tools read
them back. Their names live here alone, each with the step that writes it and who reads it,
so renaming one or adding one is a change in one place. (The Space folder's and the Hub model
folder's own files are named in :mod:`storyteller.serving`.)

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

Nothing here imports torch: the command line reads these names before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The run folder when none is named: ``--out`` / ``--run``'s default, ``./outputs``.
DEFAULT_OUT = "outputs"
#: Cached image features: ``features`` step (notebook 01); read by training and evaluation.
FEATURES_DIR = "features"
#: The features array inside ``features/``: ``features`` step; read by the feature cache.
FEATURES_FILE = "features.npy"
#: The cache index inside ``features/`` (encoder, layout, image names, image folder):
#: ``features`` step; read by the cache, ``features`` resume, the app's example photos and
#: every step run without ``--data`` (the dataset the run was made from).
INDEX_FILE = "features.json"
#: The train/val/test image names: ``vocab`` step (notebook 02); read by training,
#: evaluation, the app's example photos and notebook 05.
SPLITS_FILE = "splits.json"
#: The vocabulary: ``vocab`` step (notebook 02); read by training, evaluation, captioning,
#: the app, ``deploy`` and ``push``.
VOCAB_FILE = "vocab.pkl"
#: The checkpoint of the latest epoch: ``train`` (every epoch); read by ``train --resume``.
LAST_CHECKPOINT = "last.pth"
#: The checkpoint with the best validation loss: ``train`` (notebook 03); read by evaluation,
#: captioning, the app, ``deploy`` and ``push``.
BEST_CHECKPOINT = "best_model.pth"
#: Per-epoch losses: ``train`` (every epoch); read by the notebooks' training table.
HISTORY_FILE = "history.json"
#: The loss plot: ``train`` (redrawn every epoch); shown by notebooks 03 and 04.
LOSS_CURVE_FILE = "loss_curve.png"
#: Scores per decoding: ``evaluate`` (notebook 04); read by the notebooks' metrics table and
#: the Hub model card (``push``).
METRICS_FILE = "metrics.json"
#: Every test image's references and captions: ``evaluate``; read by the notebooks' best and
#: worst examples.
TEST_CAPTIONS_FILE = "test_captions.json"
#: A grid of test photos with their captions: ``evaluate``; shown by notebook 04.
GRID_FILE = "caption_grid.png"
#: One figure per test photo of where an attention decoder looked: ``evaluate``; notebook 04.
ATTENTION_MAPS_DIR = "attention_maps"
#: The most-frequent-caption baseline's scores: ``evaluate``; read by notebook 04.
BASELINE_FILE = "baseline.json"
#: A few training photos with a caption each: notebook 01 (``report.dataset_overview``).
DATA_EXAMPLES_FILE = "data_examples.png"
#: The best and worst test captions by CIDEr-D: notebook 04 (``report.plot_examples``).
BEST_EXAMPLES_FILE = "best_examples.png"
WORST_EXAMPLES_FILE = "worst_examples.png"
#: A story written from a test photo: notebook 05 (``save_story``); a record for people.
STORY_FILE = "story.json"
#: The Hub model folder of a dry run: notebook 05 (``publish_model``); pushed by hand.
HUB_MODEL_DIR = "hub_model"
#: The Space folder of a dry run: notebook 05 (``publish_space``); pushed by hand.
SPACE_DIR = "space"
#: Who is writing the folder: every step that writes (:mod:`storyteller.runlock`).
LOCK_FILE = ".storyteller.lock"

#: ``features/features.json`` and ``features/features.npy``, as names relative to the folder.
FEATURES_INDEX = f"{FEATURES_DIR}/{INDEX_FILE}"
FEATURES_ARRAY = f"{FEATURES_DIR}/{FEATURES_FILE}"

#: Folders that hold atomically written files of their own (the lock cleans them too).
ARTEFACT_SUBFOLDERS = (FEATURES_DIR, ATTENTION_MAPS_DIR)
#: What a later Kaggle session copies from an earlier notebook's outputs, in the order the
#: notebooks write it (``import_previous_outputs``).
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
#: What ``train`` writes, ``last.pth`` first: the order a fresh run (``--no-resume``) removes
#: an earlier run's in, so a stop halfway leaves nothing to resume from.
TRAINING_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, HISTORY_FILE, LOSS_CURVE_FILE)
#: Files only a run folder has (a repository checkout has a vocab.pkl, but none of these).
RUN_MARKERS = (FEATURES_INDEX, SPLITS_FILE, LAST_CHECKPOINT, BEST_CHECKPOINT)


@dataclass(frozen=True)
class RunPaths:
    """Where each artefact of a run lives inside its output folder."""

    out: Path

    @property
    def features(self) -> Path:
        return self.out / FEATURES_DIR

    @property
    def features_index(self) -> Path:
        return self.out / FEATURES_INDEX

    @property
    def splits(self) -> Path:
        return self.out / SPLITS_FILE

    @property
    def vocab(self) -> Path:
        return self.out / VOCAB_FILE

    @property
    def checkpoint(self) -> Path:
        return self.out / BEST_CHECKPOINT

    @property
    def last_checkpoint(self) -> Path:
        return self.out / LAST_CHECKPOINT

    @property
    def history(self) -> Path:
        return self.out / HISTORY_FILE

    @property
    def metrics(self) -> Path:
        return self.out / METRICS_FILE

    @property
    def test_captions(self) -> Path:
        return self.out / TEST_CAPTIONS_FILE

    @property
    def baseline(self) -> Path:
        return self.out / BASELINE_FILE
