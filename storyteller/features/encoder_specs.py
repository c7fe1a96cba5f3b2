"""The registry of image encoders, as data: for each name, where its network comes from, its
feature size and grid, and its preprocessing, so extraction, the cache and the app agree.
Torch-free, so the command line lists and checks encoders before any network code loads;
:mod:`storyteller.features.encoders` builds them, ``python -m storyteller encoders`` prints them.

Two layouts of the same features (:data:`LAYOUTS`): ``"pooled"``, one vector per image
(B, dim), and ``"grid"``, the last feature map before pooling, (B, h*w, dim) with positions in
row-major order, what attention reads. The pooled vector is the grid's mean, so one grid cache
serves both kinds of captioner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..errors import StorytellerError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (pixel - 127) / 128, not on the ImageNet mean/std.
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
# Inception v3's weights (ported from TensorFlow) expect pixels in [-1, 1]: normalised here,
# the net is built with ``transform_input=False`` (the same arithmetic, done once).
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

OFFLINE_ENCODER = "efficientnet_lite0"
DEFAULT_ENCODER = "resnet50"
LAYOUTS = ("pooled", "grid")
#: Where extraction decodes the photos (``features --decode-on``).
DECODE_CHOICES = ("auto", "cpu", "device")


@dataclass(frozen=True)
class Preprocessing:
    """How a PIL image becomes the encoder's input tensor (stored in the feature cache)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def transform(self) -> Callable:
        """Resize the short side, centre-crop, to tensor, normalise."""
        from torchvision import transforms  # here: the registry itself stays torch-free

        return transforms.Compose(
            [
                transforms.Resize(self.resize),
                transforms.CenterCrop(self.crop),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def tensor_transform(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """The same steps on N uint8 tensors (3, H_i, W_i) on one device -> (N, 3, crop, crop)
        float32, within about one grey level of :meth:`transform` (the resize is rounded to 8
        bits, as PIL's is). Images of one size are resized together, in a few kernel launches.
        """
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

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


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise StorytellerError(f"unknown layout '{layout}'; choose one of: {', '.join(LAYOUTS)}")
    return layout


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder. ``grid``: its feature map's (h, w) at the crop (224 px / 32 = 7 x 7 for
    most; Inception v3 8 x 8 at 299 px; SqueezeNet, downsampling by 16, 13 x 13)."""

    name: str
    dim: int
    preprocessing: Preprocessing
    needs_download: bool
    grid: tuple[int, int] = (7, 7)
    library: str = "torchvision"  # or "timm", "efficientnet-lite"
    #: pip requirements beyond the package's own (pyproject's extra of the same name); a Space
    #: serving a run on this encoder gets them in its requirements.txt.
    requirements: tuple[str, ...] = ()

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]

    def shape(self, layout: str) -> tuple[int, ...]:
        """One image's features in ``layout``: (dim,) pooled or (h*w, dim) grid."""
        check_layout(layout)
        return (self.dim,) if layout == "pooled" else (self.positions, self.dim)


def _torchvision(
    name: str, dim: int, grid: tuple[int, int] = (7, 7), **preprocessing
) -> EncoderSpec:
    return EncoderSpec(name, dim, Preprocessing(**preprocessing), needs_download=True, grid=grid)


ENCODERS: dict[str, EncoderSpec] = {
    "resnet50": _torchvision("resnet50", 2048),
    "efficientnet_lite0": EncoderSpec(
        "efficientnet_lite0",
        1280,
        Preprocessing(mean=LITE_MEAN, std=LITE_STD),
        needs_download=False,
        library="efficientnet-lite",
    ),
    "resnet18": _torchvision("resnet18", 512),
    "resnet101": _torchvision("resnet101", 2048),
    "wide_resnet50_2": _torchvision("wide_resnet50_2", 2048),
    # timm's resnest50d.in1k: bilinear, crop_pct 0.875 (256 -> 224), ImageNet mean/std.
    "resnest50d": EncoderSpec(
        "resnest50d",
        2048,
        Preprocessing(),
        needs_download=True,
        library="timm",
        requirements=("timm>=0.9",),
    ),
    "densenet121": _torchvision("densenet121", 1024),
    "squeezenet1_1": _torchvision("squeezenet1_1", 512, grid=(13, 13)),
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large", 960),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small", 576),
    "shufflenet_v2_x1_0": _torchvision("shufflenet_v2_x1_0", 1024),
    # torchvision's Inception_V3_Weights: resize 342, crop 299.
    "inception_v3": _torchvision(
        "inception_v3",
        2048,
        grid=(8, 8),
        resize=342,
        crop=299,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
    ),
    "efficientnet_b0": _torchvision("efficientnet_b0", 1280),
}


def get_encoder_spec(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name]
    except KeyError:
        raise StorytellerError(
            f"unknown encoder '{name}'; choose one of: {', '.join(ENCODERS)}"
        ) from None
