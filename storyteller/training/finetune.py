"""Fine-tuning the encoder: its last N blocks trained with the decoder, from the photos
(``train --fine-tune-encoder N``). The frozen part stays in eval mode (its BatchNorm statistics
must not drift) and keeps no activations for autograd; each photo is encoded once per epoch for
all its captions. The checkpoint keeps the whole encoder's weights (``encoder_weights``), so
captioning loads them in place of the registry's ImageNet weights, with no download."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms

from ..artefacts import ArtefactError
from ..config import ModelConfig
from ..data.captions import CaptionDataset
from ..data.vocab import PAD_ID, Vocabulary
from ..errors import StorytellerError
from ..features.cache_format import FeatureCache
from ..features.encoder_specs import Preprocessing
from ..features.encoders import build_encoder, encoder_blocks
from ..features.images import open_image
from ..models import CaptionDecoder, decoder_class

#: Checkpoint key of the fine-tuned encoder's state_dict (absent for a frozen encoder).
ENCODER_WEIGHTS = "encoder_weights"


class FineTunedEncoder(nn.Module):
    """``backbone`` with only its last ``num_blocks`` blocks trainable; the rest frozen and
    always in eval mode."""

    def __init__(self, backbone: nn.Module, num_blocks: int, name: str = "encoder"):
        super().__init__()
        blocks = encoder_blocks(backbone)
        if not 1 <= num_blocks <= len(blocks):
            raise StorytellerError(
                f"--fine-tune-encoder {num_blocks}: {name} has {len(blocks)} blocks; "
                f"choose 1..{len(blocks)} (0 keeps it frozen and trains from the feature cache)"
            )
        self.backbone = backbone
        self.num_blocks = num_blocks
        self._trained = [module for block in blocks[-num_blocks:] for module in block]
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        for module in self._trained:
            for parameter in module.parameters():
                parameter.requires_grad_(True)
        self.train(False)

    def train(self, mode: bool = True) -> FineTunedEncoder:
        super().train(False)  # frozen blocks: eval, whatever the loop asks
        self.training = mode
        for module in self._trained:
            module.train(mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for module in self._trained for p in module.parameters()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B, 3, H, W) -> (B, dim) pooled or (B, h*w, dim) grid
        return self.backbone(images)


class EncoderDecoder(nn.Module):
    """Photos and their captions -> next-word logits, the encoder run once per photo (DDP and
    ``nn.DataParallel`` split both inputs on the photo axis together)."""

    def __init__(self, encoder: FineTunedEncoder, decoder: CaptionDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(
        self, images: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # images: (B, 3, H, W); captions: (B, K, T) ids, K captions per photo
        features = self.encoder(images)  # (B, dim) or (B, h*w, dim)
        features = features.repeat_interleave(captions.size(1), dim=0)  # (B*K, ...)
        return self.decoder(features, captions.flatten(0, 1))  # (B*K, T, V), {name: scalar}


def image_transform(preprocessing: Preprocessing, augment: bool) -> Callable:
    """The encoder's own preprocessing; with ``augment`` a random crop and a horizontal flip
    in place of the centre crop (off by default: a flip swaps the captions' "left" and
    "right"; see docs/encoders.md)."""
    if not augment:
        return preprocessing.transform()
    return transforms.Compose(
        [
            transforms.Resize(preprocessing.resize),
            transforms.RandomCrop(preprocessing.crop),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(preprocessing.mean, preprocessing.std),
        ]
    )


class ImageCaptions(Dataset):
    """One item per photo: (pixels (3, crop, crop), captions (K, T) ids). K is the most
    captions any photo has; one with fewer repeats its own in turn. Photos ``keep`` refuses
    (unreadable at extraction) are left out; one that fails to open now is an error."""

    def __init__(
        self,
        dataset: CaptionDataset,
        images: list[str],
        vocab: Vocabulary,
        max_length: int,
        transform: Callable,
        keep: Callable[[str], bool] = lambda name: True,
    ):
        self.image_dir, self.transform = dataset.image_dir, transform
        self.names = [name for name in images if keep(name) and dataset.captions.get(name)]
        self.per_image = max((len(dataset.captions[n]) for n in self.names), default=1)
        self.captions: list[list[torch.Tensor]] = []
        for name in self.names:
            ids = [torch.tensor(vocab.encode(c, max_length)) for c in dataset.captions[name]]
            self.captions.append([ids[k % len(ids)] for k in range(self.per_image)])

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        path = self.image_dir / self.names[i]
        try:
            pixels = self.transform(open_image(path))  # (3, crop, crop)
        except Exception as exc:
            raise StorytellerError(f"cannot read {path} for fine-tuning: {exc}") from None
        return pixels, self.captions[i]


def collate_images(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Photos (B, 3, crop, crop) and their captions (B, K, T), padded with ``<pad>``."""
    images = torch.stack([pixels for pixels, _ in batch])  # (B, 3, crop, crop)
    flat = [ids for _, captions in batch for ids in captions]
    padded = nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=PAD_ID)  # (B*K, T)
    return images, padded.view(len(batch), -1, padded.size(-1))  # (B, K, T)


def _backbone(config: ModelConfig, pretrained: bool) -> nn.Module:
    """The registry's encoder ``config`` names, giving the features its decoder reads."""
    layout = decoder_class(config.decoder).feature_layout
    return build_encoder(config.encoder, pretrained=pretrained, grid=layout == "grid")


def build_fine_tuned_encoder(config: ModelConfig) -> FineTunedEncoder:
    """The ImageNet encoder ``config`` names, its last ``fine_tuned_blocks`` blocks trainable."""
    return FineTunedEncoder(_backbone(config, True), config.fine_tuned_blocks, config.encoder)


def check_encoder_weights(backbone: nn.Module, weights: object, path: object, name: str) -> dict:
    """A checkpoint's fine-tuned encoder weights, checked against ``backbone`` before anything
    is loaded (names, shapes, finite values): an :class:`ArtefactError` naming the file."""
    expected = backbone.state_dict()
    if not isinstance(weights, dict):
        raise ArtefactError(path, f"{ENCODER_WEIGHTS} is not a state_dict")
    missing = sorted(set(expected) - set(weights))
    unknown = sorted(set(weights) - set(expected))
    if missing or unknown:
        first = (missing or unknown)[0]
        raise ArtefactError(
            path,
            f"{ENCODER_WEIGHTS} are not a {name}'s ({'missing' if missing else 'unknown'} "
            f"{first!r:.60})",
        )
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ArtefactError(
                path, f"{ENCODER_WEIGHTS} {key} is {shape}, {name} has {tuple(expected[key].shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ArtefactError(path, f"{ENCODER_WEIGHTS} {key} holds NaN or infinity")
    return weights


def checkpoint_encoder(config: ModelConfig, checkpoint: dict, path: object) -> nn.Module | None:
    """The fine-tuned encoder a checkpoint holds (``config``: its checked ModelConfig), checked
    before loading, with no download; ``None`` for a frozen encoder."""
    if not config.fine_tuned_blocks:
        return None
    backbone = _backbone(config, pretrained=False)
    weights = checkpoint.get(ENCODER_WEIGHTS)
    backbone.load_state_dict(check_encoder_weights(backbone, weights, path, config.encoder))
    return backbone


@torch.inference_mode()
def encode_images(extractor, image_dir, names: list[str], batch_size: int = 32) -> FeatureCache:
    """``names`` in ``image_dir`` through a fine-tuned encoder's ``extractor`` as an in-memory
    FeatureCache: evaluation reads the features the decoder learned with."""
    blocks = [
        extractor([open_image(image_dir / name) for name in names[start : start + batch_size]])
        for start in range(0, len(names), batch_size)
    ]  # each (b, dim) or (b, h*w, dim)
    features = torch.cat(blocks)  # (N, dim) or (N, h*w, dim)
    spec = extractor.spec
    meta = {"encoder": spec.name, "dim": spec.dim, "layout": extractor.layout, "done": len(names)}
    if extractor.layout == "pooled":
        return FeatureCache(names, features, meta)
    meta["grid"] = list(spec.grid)
    return FeatureCache(names, None, meta, array=features.half().numpy())
