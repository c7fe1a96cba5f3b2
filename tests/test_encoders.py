"""Every encoder family in the registry, built with random weights (no downloads): the
shapes the registry promises, the trunk cut where each torchvision net pools, preprocessing,
the offline error messages and the ``encoders`` command."""

import json
import sys

import pytest
import torch
from torch import nn

from storyteller.cli import main
from storyteller.errors import StorytellerError
from storyteller.features import encoder_specs, encoders
from storyteller.features.encoder_specs import ENCODERS
from storyteller.features.encoder_table import encoder_rows
from storyteller.features.encoders import build_encoder, with_layout

SEED_ENCODERS = (  # every encoder the seeds used, plus the offline one
    "resnet50 resnet101 resnet18 wide_resnet50_2 resnest50d densenet121 squeezenet1_1 "
    "mobilenet_v3_large mobilenet_v3_small shufflenet_v2_x1_0 inception_v3 efficientnet_b0 "
    "efficientnet_lite0"
).split()


def test_registry_covers_every_encoder_the_seeds_used():
    assert sorted(ENCODERS) == sorted(SEED_ENCODERS)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_gives_its_registered_grid_whose_mean_is_the_pooled_vector(name):
    spec = ENCODERS[name]
    grid_encoder = build_encoder(name, pretrained=False, grid=True)
    pooled_encoder = with_layout(grid_encoder, name, "pooled")  # the same trunk, pooled
    assert pooled_encoder.trunk is grid_encoder.trunk
    crop = spec.preprocessing.crop
    images = torch.randn(2, 3, crop, crop)  # (2, 3, crop, crop)
    with torch.inference_mode():
        feature_map = grid_encoder.trunk(images)  # (2, dim, h, w)
        grid = grid_encoder(images)  # (2, h*w, dim)
        pooled = pooled_encoder(images)  # (2, dim)
    h, w = spec.grid
    assert feature_map.shape == (2, spec.dim, h, w)
    assert grid.shape == (2, h * w, spec.dim) == (2, *spec.shape("grid"))
    assert pooled.shape == (2, spec.dim) == (2, *spec.shape("pooled"))
    assert torch.allclose(grid.mean(dim=1), pooled, atol=1e-5)  # global average pooling
    # Positions are row-major: position r*w + c is the feature map's (r, c).
    assert torch.equal(grid[:, 1 * w + 3], feature_map[:, :, 1, 3])
    assert not any(p.requires_grad for p in grid_encoder.parameters())
    assert (grid_encoder.dim, grid_encoder.grid) == (spec.dim, spec.grid)


def _head_input(net: nn.Module, name: str, images: torch.Tensor) -> torch.Tensor:
    """What the torchvision net's own forward feeds its classifier: the pooled features
    (for SqueezeNet, whose classifier is a 1x1 convolution, the map it convolves, pooled)."""
    head = (
        net.classifier[1]
        if name == "squeezenet1_1"
        else next(m for m in net.modules() if isinstance(m, nn.Linear))
    )
    seen = []
    handle = head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.inference_mode():
        net(images)
    handle.remove()
    features = seen[0]
    return features.mean(dim=(2, 3)) if features.dim() == 4 else features


@pytest.mark.parametrize(
    "name", [n for n, spec in ENCODERS.items() if spec.library == "torchvision"]
)
def test_torchvision_trunk_ends_where_the_net_pools(monkeypatch, name):
    """The trunk cut is the net's own forward up to its pooling: DenseNet's final ReLU,
    ShuffleNet's conv5, Inception's block order, SqueezeNet's 512 channels are all kept."""
    net = encoders._torchvision_net(name, pretrained=False).eval()
    monkeypatch.setattr(encoders, "_torchvision_net", lambda *_: net)
    encoder = build_encoder(name, pretrained=False)  # its trunk shares net's modules
    crop = ENCODERS[name].preprocessing.crop
    images = torch.randn(1, 3, crop, crop)  # (1, 3, crop, crop)
    with torch.inference_mode():
        pooled = encoder(images)  # (1, dim)
    assert torch.allclose(pooled, _head_input(net, name, images), atol=1e-5)


def test_densenet_features_are_after_the_final_relu():
    encoder = build_encoder("densenet121", pretrained=False, grid=True)
    images = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        before_relu = encoder.trunk.features(images)  # (1, 1024, 7, 7), ends in a batch norm
        grid = encoder(images)  # (1, 49, 1024)
    assert (before_relu < 0).any() and (grid >= 0).all()


def test_inception_has_its_own_299_px_preprocessing_equal_to_torchvisions_transform_input():
    spec = ENCODERS["inception_v3"]
    assert (spec.preprocessing.resize, spec.preprocessing.crop, spec.grid) == (342, 299, (8, 8))
    # torchvision feeds ImageNet-normalised pixels through transform_input; this registry
    # normalises to [-1, 1] at once: the same numbers.
    pixels = torch.rand(1, 3, 4, 4)  # in [0, 1]
    mean = torch.tensor(encoder_specs.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(encoder_specs.IMAGENET_STD).view(1, 3, 1, 1)
    net = encoders._torchvision_net("inception_v3", pretrained=False)
    net.transform_input = True
    via_torchvision = net._transform_input((pixels - mean) / std)
    ours = (pixels - torch.tensor(spec.preprocessing.mean).view(1, 3, 1, 1)) / torch.tensor(
        spec.preprocessing.std
    ).view(1, 3, 1, 1)
    assert torch.allclose(via_torchvision, ours, atol=1e-6)
    assert (
        net.transform_input and not encoders._torchvision_net("inception_v3", False).transform_input
    )


def test_missing_torchvision_weights_name_the_offline_encoder(monkeypatch):
    from urllib.error import URLError

    from torchvision.models._api import WeightsEnum

    def no_internet(self, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_internet)
    for name in ("inception_v3", "densenet121"):  # inception: its weights-only kwargs accepted
        with pytest.raises(StorytellerError, match="URLError.*--encoder efficientnet_lite0"):
            build_encoder(name)


def test_missing_timm_weights_name_the_offline_encoder(monkeypatch):
    timm = pytest.importorskip("timm")

    def no_internet(*args, **kwargs):
        raise OSError("cannot reach huggingface.co")

    monkeypatch.setattr(timm, "create_model", no_internet)
    with pytest.raises(
        StorytellerError, match="timm from the Hugging Face Hub.*efficientnet_lite0"
    ):
        build_encoder("resnest50d")


def test_missing_timm_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(StorytellerError, match=r"pip install 'storyteller\[timm\]'"):
        build_encoder("resnest50d", pretrained=False)
    [row] = encoder_rows(["resnest50d"], speed=False, log=lambda _: None)
    assert "timm" in row["error"] and row["params_m"] is None


def test_encoders_command_lists_every_encoder_without_timing(capsys):
    assert main(["encoders", "--no-speed"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("| ")][1:]  # minus header
    assert [line.split(" | ")[0].strip("| ") for line in lines] == list(ENCODERS)
    inception = next(line for line in lines if line.startswith("| inception_v3 "))
    assert inception.split(" | ")[1:5] == ["2048", "8x8", "299", "21.79"]
    assert all(line.rstrip(" |").endswith("-") for line in lines)  # no speed column filled
    assert f"[{len(ENCODERS)}/{len(ENCODERS)}] efficientnet_b0" in err  # progress on stderr
    assert "CPU img/s:" not in out


def test_encoders_command_times_one_small_encoder(capsys):
    assert main(["encoders", "--only", "mobilenet_v3_small", "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    [row] = [line for line in out.splitlines() if line.startswith("| mobilenet_v3_small ")]
    cells = row.strip("| ").split(" | ")
    assert cells[:5] == ["mobilenet_v3_small", "576", "7x7", "224", "0.93"]
    assert float(cells[6]) > 0
    assert "batch 2" in out and "timing" in err


def test_encoders_command_rejects_a_bad_batch_size(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["encoders", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "argument --batch-size: must be an integer in [1, 1024]" in capsys.readouterr().err


# Random Inception weights (no BN statistics) grow activations past float16's 65504 by the
# last block (about 5e11): both images are skipped and reported, the metadata still written.
def test_inception_grid_and_299_px_preprocessing_land_in_the_cache_metadata(tiny_data, tmp_path):
    from storyteller.data.captions import load_dataset
    from storyteller.features.cache import extract_features
    from storyteller.features.cache_format import load_feature_cache

    dataset = load_dataset(tiny_data)
    names = dataset.images[:2]
    encoder = build_encoder("inception_v3", pretrained=False, grid=True)  # no download
    with pytest.warns(UserWarning, match=r"2 image\(s\) skipped whose inception_v3 features"):
        extract_features(
            dataset.image_dir, names, tmp_path, "inception_v3", 2, 0, encoder=encoder, layout="grid"
        )
    meta = json.loads((tmp_path / "features.json").read_text())
    assert (meta["encoder"], meta["dim"], meta["grid"]) == ("inception_v3", 2048, [8, 8])
    assert meta["preprocessing"] == ENCODERS["inception_v3"].preprocessing.to_dict()
    assert (meta["preprocessing"]["resize"], meta["preprocessing"]["crop"]) == (342, 299)
    cache = load_feature_cache(tmp_path)
    assert meta["non_finite"] == names and meta["non_finite_peak"] > 65504
    assert (cache.layout, cache.grid, cache.dim, len(cache)) == ("grid", (8, 8), 2048, 0)
