"""Captioning new photos: the trained decoder plus the same encoder that made its features (a
fine-tuned one from the checkpoint, else the registry's ImageNet weights)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .config import SMOKE_LABEL, Strategy, model_label
from .data.vocab import Vocabulary
from .decoding import decode
from .errors import StorytellerError
from .features.cache import FeatureExtractor
from .features.images import open_image
from .figures.attention_maps import AttentionCaption, attends, caption_with_attention
from .models import CaptionDecoder
from .models.checkpoint import load_model
from .runtime import get_device
from .training.finetune import checkpoint_encoder


class Captioner:
    """Load once, caption many: ``Captioner.from_files(ckpt, vocab)([image, ...])``, or
    ``Captioner.from_pretrained("USER/NAME")`` for a Hub model or a model folder;
    :meth:`load` takes any of them."""

    def __init__(
        self,
        model: CaptionDecoder,
        vocab: Vocabulary,
        extractor: FeatureExtractor,
        checkpoint: dict | None = None,
    ):
        self.model, self.vocab, self.extractor = model, vocab, extractor
        # What save_pretrained writes besides the weights; epoch and loss are shown by the app.
        kept = ("epoch", "best_val_loss", "train_config", "trained_on_sample")
        self.checkpoint_info = {k: v for k, v in (checkpoint or {}).items() if k in kept}

    @property
    def label(self) -> str | None:
        """What everything this model writes is shown with: :data:`~storyteller.config.SMOKE_LABEL`
        for a smoke run, :data:`~storyteller.config.SAMPLE_LABEL` for a model of the drawn
        sample (it knows shapes, not photos), None for a real model."""
        return model_label(self.checkpoint_info)

    @property
    def smoke(self) -> bool:
        """Whether the model comes from a smoke run (meaningless captions)."""
        return self.label == SMOKE_LABEL

    def labelled(self, line: str) -> str:
        """``line`` (a caption as shown to people) after the model's :attr:`label` line, if
        it has one."""
        return f"{self.label}\n{line}" if self.label else line

    @classmethod
    def from_files(
        cls, checkpoint: str | Path, vocab: str | Path, device: torch.device | None = None
    ) -> Captioner:
        device = device or get_device()
        vocabulary = Vocabulary.load(vocab)
        model, state = load_model(checkpoint, vocabulary, device)
        encoder = checkpoint_encoder(model.config, state, checkpoint)  # None: ImageNet's
        return cls._assemble(model, vocabulary, encoder, state, device)

    @classmethod
    def _assemble(cls, model, vocab, encoder, info: dict, device) -> Captioner:
        extractor = FeatureExtractor(
            model.config.encoder, device, encoder=encoder, layout=model.feature_layout
        )
        return cls(model, vocab, extractor, info)

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | Path,
        revision: str | None = None,
        device: torch.device | None = None,
        token: str | None = None,
    ) -> Captioner:
        """A captioner from the Hub (``"USER/NAME"``; ``revision`` pins a branch, tag or commit)
        or from a local model folder. Every file is checked before use."""
        from .serving.hub import load_model_folder, resolve_model

        device = device or get_device()
        loaded = load_model_folder(resolve_model(model_id, revision, token), device)
        return cls._assemble(loaded.model, loaded.vocab, loaded.encoder, loaded.info, device)

    @classmethod
    def load(
        cls,
        source: str | Path,
        vocab: str | Path | None = None,
        device: torch.device | None = None,
        revision: str | None = None,
    ) -> Captioner:
        """Whatever names a trained captioner: a checkpoint file (with ``vocab``, default the
        ``vocab.pkl`` beside it), a run folder, a model folder, or a Hub model id."""
        from .run_folder import BEST_CHECKPOINT, VOCAB_FILE
        from .serving.hub import is_checkpoint_file, is_model_folder

        path = Path(source).expanduser()
        is_dir = os.path.isdir(path)  # False, not OSError, for a Hub id too long to be a path
        if is_dir and not is_model_folder(path) and (path / BEST_CHECKPOINT).is_file():
            path = path / BEST_CHECKPOINT  # a run folder
        if is_checkpoint_file(path):
            return cls.from_files(path, vocab or path.parent / VOCAB_FILE, device)
        if vocab is not None:
            raise StorytellerError(
                f"{source} carries its own vocabulary (vocab.json): give no vocabulary with it"
            )
        return cls.from_pretrained(source, revision, device)

    def save_pretrained(
        self, folder: str | Path, repo: str | None = None, metrics: dict | None = None
    ) -> Path:
        """Write this captioner as a model folder into ``folder`` (absent or empty), ready to
        upload; :meth:`from_pretrained` reads it back. ``repo`` and ``metrics`` go into the
        card."""
        from .models.checkpoint import train_config_of
        from .serving.hub import FORMAT_VERSION, write_model_folder
        from .serving.hub_card import model_card
        from .serving.hub_push import model_files

        config = self.model.config
        fine_tuned = bool(config.fine_tuned_blocks)
        encoder = self.extractor.encoder.state_dict() if fine_tuned else None
        repo = repo or f"USER/{Path(folder).name}"
        info = dict(self.checkpoint_info)
        info["train_config"] = train_config_of(info, "the captioner's training config").to_dict()
        files = model_files(fine_tuned)
        card = model_card(repo, config, self.vocab, info, metrics, FORMAT_VERSION, files)
        weights = self.model.state_dict()
        return write_model_folder(folder, config, weights, self.vocab, info, encoder, card)

    def _encode(self, images: Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """PIL images or image paths -> their features on the model's device: (B, feature_dim),
        or (B, h*w, feature_dim) for a captioner that reads the grid."""
        pil = [im if isinstance(im, Image.Image) else open_image(im) for im in images]
        return self.extractor(pil).to(self.extractor.device)

    @torch.inference_mode()
    def caption(
        self,
        images: Sequence[Image.Image | str | Path],
        beam_size: int = Strategy.beam_size,
        max_length: int = Strategy.max_length,
        length_penalty: float = Strategy.length_penalty,
    ) -> list[str]:
        """Captions for PIL images or image paths (greedy when ``beam_size == 1``)."""
        strategy = Strategy(beam_size, max_length, length_penalty)
        features = self._encode(images)  # (B, feature_dim)
        return [self.vocab.decode(ids) for ids in decode(self.model, features, strategy)]

    __call__ = caption

    @property
    def attends(self) -> bool:
        """Whether the captioner can say where it looked (:meth:`caption_with_attention`)."""
        return attends(self.model)

    @torch.inference_mode()
    def caption_with_attention(
        self,
        images: Sequence[Image.Image | str | Path],
        beam_size: int = Strategy.beam_size,
        max_length: int = Strategy.max_length,
        length_penalty: float = Strategy.length_penalty,
    ) -> list[AttentionCaption]:
        """Captions with each word's weights over the encoder's grid (attention decoders only),
        decoded as :meth:`caption` decodes."""
        strategy = Strategy(beam_size, max_length, length_penalty)
        features = self._encode(images)  # (B, h*w, feature_dim)
        grid = self.extractor.spec.grid
        return caption_with_attention(self.model, self.vocab, features, grid, strategy)
