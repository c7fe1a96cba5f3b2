"""Captioning new photos: the trained decoder plus the same encoder that made its features.

The decoder is whichever one the checkpoint names (rebuilt through :mod:`storyteller.models`);
only its decoding protocol is used here. A run that fine-tuned its encoder
(``train --fine-tune-encoder N``) carries the encoder's weights in the checkpoint, and those
replace the registry's ImageNet weights: nothing is downloaded for it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .attention_maps import AttentionCaption, attends, caption_with_attention
from .checkpoint import load_model
from .decoding import beam_search, greedy_decode
from .features import FeatureExtractor
from .finetune import checkpoint_encoder
from .models import CaptionDecoder
from .runtime import get_device
from .vocab import Vocabulary


class Captioner:
    """Load once, caption many: ``Captioner.from_files(ckpt, vocab)([image, ...])``."""

    def __init__(
        self,
        model: CaptionDecoder,
        vocab: Vocabulary,
        extractor: FeatureExtractor,
        checkpoint: dict | None = None,
    ):
        self.model, self.vocab, self.extractor = model, vocab, extractor
        self.checkpoint_info = {
            k: v for k, v in (checkpoint or {}).items() if k in ("epoch", "best_val_loss")
        }

    @classmethod
    def from_files(
        cls, checkpoint: str | Path, vocab: str | Path, device: torch.device | None = None
    ) -> Captioner:
        device = device or get_device()
        vocabulary = Vocabulary.load(vocab)
        model, state = load_model(checkpoint, vocabulary, device)
        encoder = checkpoint_encoder(model.config, state, checkpoint)  # None: ImageNet's
        extractor = FeatureExtractor(
            model.config.encoder, device, encoder=encoder, layout=model.feature_layout
        )
        return cls(model, vocabulary, extractor, state)

    @torch.inference_mode()
    def caption(
        self,
        images: Sequence[Image.Image | str | Path],
        beam_size: int = 1,
        max_length: int = 50,
        length_penalty: float = 0.7,
    ) -> list[str]:
        """Captions for PIL images or image paths (greedy when ``beam_size == 1``)."""
        pil = [im if isinstance(im, Image.Image) else Image.open(im) for im in images]
        features = self.extractor(pil).to(self.extractor.device)  # (B, feature_dim)
        if beam_size <= 1:
            ids = greedy_decode(self.model, features, max_length)
        else:
            ids = [
                h[0].ids
                for h in beam_search(self.model, features, beam_size, max_length, length_penalty)
            ]
        return [self.vocab.decode(seq) for seq in ids]

    __call__ = caption

    @property
    def attends(self) -> bool:
        """Whether the captioner can say where it looked (:meth:`caption_with_attention`)."""
        return attends(self.model)

    @torch.inference_mode()
    def caption_with_attention(
        self,
        images: Sequence[Image.Image | str | Path],
        beam_size: int = 1,
        max_length: int = 50,
        length_penalty: float = 0.7,
    ) -> list[AttentionCaption]:
        """Captions with each word's weights over the encoder's grid (attention decoders
        only; draw them with :func:`storyteller.attention_maps.write_attention_maps`)."""
        pil = [im if isinstance(im, Image.Image) else Image.open(im) for im in images]
        features = self.extractor(pil).to(self.extractor.device)  # (B, h*w, feature_dim)
        return caption_with_attention(
            self.model,
            self.vocab,
            features,
            self.extractor.spec.grid,
            beam_size,
            max_length,
            length_penalty,
        )
