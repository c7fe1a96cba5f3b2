"""Fine-tuning the encoder (`train --fine-tune-encoder N`): blocks, freezing, the network that
runs photos through the encoder into the decoder, checkpoints that carry the encoder, resume,
and captioning and evaluation with the fine-tuned weights."""

import dataclasses
import json
import os

import pytest
import torch
from bad_images import make_fifo, returns_within
from PIL import Image
from test_train import _fresh_run

from storyteller import pipeline
from storyteller.artefacts import ArtefactError
from storyteller.cli import main
from storyteller.config import ModelConfig, TrainConfig, train_flags
from storyteller.data.captions import load_dataset
from storyteller.data.vocab import Vocabulary
from storyteller.errors import StorytellerError
from storyteller.evaluation.evaluate import teacher_forced_loss
from storyteller.features.cache import FeatureExtractor, extract_features
from storyteller.features.cache_format import load_feature_cache
from storyteller.features.encoder_specs import ENCODERS
from storyteller.features.encoders import build_encoder, encoder_blocks
from storyteller.features.images import open_image
from storyteller.inference import Captioner
from storyteller.models import build_model
from storyteller.models.checkpoint import read_checkpoint
from storyteller.runtime import torch_save_atomic
from storyteller.training.finetune import (
    ENCODER_WEIGHTS,
    EncoderDecoder,
    FineTunedEncoder,
    ImageCaptions,
    collate_images,
    encode_images,
    image_transform,
)

quiet = lambda _: None  # noqa: E731
SMALL = {"hidden_size": 32, "embed_size": 16}


def _params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("name", [n for n in ENCODERS if n != "resnest50d"] + ["resnest50d"])
def test_blocks_cover_every_weight_once_in_forward_order(name):
    if ENCODERS[name].library == "timm":
        pytest.importorskip("timm")
    encoder = build_encoder(name, pretrained=False)
    blocks = encoder_blocks(encoder)
    assert len(blocks) >= 4
    modules = [m for block in blocks for m in block]
    assert _params(modules) == _params([encoder])  # every weight in exactly one block
    ids = [id(p) for m in modules for p in m.parameters()]
    assert len(ids) == len(set(ids))


def test_resnet_blocks_are_its_stages():
    encoder = build_encoder("resnet18", pretrained=False)
    blocks = encoder_blocks(encoder)
    trunk = encoder.trunk
    assert blocks[-1] == [trunk[7]] and blocks[-4] == [trunk[4]]  # layer4 ... layer1
    assert blocks[0] == [trunk[0], trunk[1]]  # conv1 + bn1: a lone norm joins its conv


def test_only_the_last_blocks_learn_and_the_frozen_part_stays_in_eval():
    backbone = build_encoder("mobilenet_v3_small", pretrained=False)
    blocks = encoder_blocks(backbone)
    encoder = FineTunedEncoder(backbone, 2, "mobilenet_v3_small")
    trained = {id(p) for block in blocks[-2:] for m in block for p in m.parameters()}
    assert {id(p) for p in encoder.trainable_parameters()} == trained
    assert all(p.requires_grad == (id(p) in trained) for p in backbone.parameters())
    encoder.train()
    assert encoder.training
    assert all(m.training for block in blocks[-2:] for m in block)
    assert not any(m.training for block in blocks[:-2] for m in block for m in m.modules())
    frozen = {k: v.clone() for k, v in blocks[0][0].state_dict().items()}  # incl. BN stats
    optimizer = torch.optim.SGD(encoder.trainable_parameters(), lr=0.1)
    encoder(torch.randn(4, 3, 96, 96)).pow(2).mean().backward()
    optimizer.step()
    for key, value in blocks[0][0].state_dict().items():
        assert torch.equal(value, frozen[key]), key  # weights and running statistics kept


@pytest.mark.parametrize("blocks", [0, 99])
def test_a_block_count_out_of_range_is_one_clear_line(blocks):
    with pytest.raises(StorytellerError, match=r"resnet18 has 5 blocks; choose 1\.\.5"):
        FineTunedEncoder(build_encoder("resnet18", pretrained=False), blocks, "resnet18")


@pytest.mark.parametrize("decoder", ["lstm", "attention"])
def test_photos_split_between_replicas_give_the_batch_result(decoder):
    """What nn.DataParallel and DDP do: split photos (B, ...) and captions (B, K, T) on the
    photo axis together; each share's logits are the whole batch's rows for its photos."""
    torch.manual_seed(0)
    layout = "grid" if decoder == "attention" else "pooled"
    backbone = build_encoder("squeezenet1_1", pretrained=False, grid=layout == "grid")
    config = ModelConfig(vocab_size=30, feature_dim=512, decoder=decoder, **SMALL)
    network = EncoderDecoder(FineTunedEncoder(backbone, 1), build_model(config)).eval()
    images = torch.randn(4, 3, 64, 64)  # (B, 3, H, W)
    items = [(images[i], [torch.randint(4, 30, (6,)) for _ in range(3)]) for i in range(4)]
    pixels, captions = collate_images(items)  # (4, 3, 64, 64), (4, 3, 6)
    assert captions.shape == (4, 3, 6)
    with torch.no_grad():
        whole, _ = network(pixels, captions)  # (12, 6, V)
        halves = [network(pixels[s], captions[s])[0] for s in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(torch.cat(halves), whole)
    assert whole.shape == (12, 6, 30)


def _fine_tune(tiny_data, run, epochs, decoder="lstm", **kwargs):
    return pipeline.train_step(
        tiny_data,
        run,
        TrainConfig(num_epochs=epochs, batch_size=40, num_workers=0),
        {**SMALL, "decoder": decoder},
        log=quiet,
        fine_tune_encoder=1,
        **kwargs,
    )


def test_fine_tuning_trains_resumes_exactly_and_captions_with_its_encoder(
    tiny_data, tiny_run, tmp_path
):
    """On the sample: the loss improves, the checkpoint holds the fine-tuned encoder (changed
    from ImageNet's), a run stopped after one epoch and resumed ends with the same weights as
    one that was not stopped, and caption / evaluate use the fine-tuned encoder."""
    whole = _fresh_run(tiny_data, tiny_run, tmp_path / "whole")
    result = _fine_tune(tiny_data, whole, 2)
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[1]["val_loss"] < result.history[0]["val_loss"]

    stopped = _fresh_run(tiny_data, tiny_run, tmp_path / "stopped")
    _fine_tune(tiny_data, stopped, 1)
    _fine_tune(tiny_data, stopped, 2)  # resumes from last.pth
    a, b = read_checkpoint(whole / "last.pth"), read_checkpoint(stopped / "last.pth")
    assert a["model_config"]["fine_tuned_blocks"] == 1
    for first, second in zip(a["history"], b["history"], strict=True):
        assert (first["train_loss"], first["val_loss"]) == (
            second["train_loss"],
            second["val_loss"],
        )
    for key in (ENCODER_WEIGHTS, "model"):
        for name, value in a[key].items():
            torch.testing.assert_close(value, b[key][name], msg=f"{key} {name}")

    imagenet = build_encoder("efficientnet_lite0").state_dict()
    tuned = a[ENCODER_WEIGHTS]
    changed = [
        k for k, v in tuned.items() if v.is_floating_point() and not torch.equal(v, imagenet[k])
    ]
    assert changed and all(k.startswith("trunk.net._") for k in changed)
    assert any("_blocks.15." in k or "_conv_head" in k or "_bn1" in k for k in changed)
    assert not any("_conv_stem" in k for k in changed)  # the frozen stem kept ImageNet's

    captioner = Captioner.from_files(whole / "best_model.pth", whole / "vocab.pkl")
    photo = open_image(tiny_data / "Images" / sorted((tiny_data / "Images").iterdir())[0].name)
    best = read_checkpoint(whole / "best_model.pth")
    reference = build_encoder("efficientnet_lite0", pretrained=False)
    reference.load_state_dict(best[ENCODER_WEIGHTS])
    expected = FeatureExtractor("efficientnet_lite0", torch.device("cpu"), reference)([photo])
    torch.testing.assert_close(captioner.extractor([photo]), expected)
    assert captioner([photo])[0]

    results = pipeline.evaluate_step(tiny_data, whole, (1,), meteor="none", log=quiet)
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["greedy"]["test_loss"] == results["greedy"]["test_loss"]
    # evaluate scored the test photos through the fine-tuned encoder, not the frozen cache
    test = json.loads((whole / "splits.json").read_text())["test"]
    tuned_cache = encode_images(captioner.extractor, tiny_data / "Images", test)
    model, vocab = captioner.model, captioner.vocab
    dataset = load_dataset(tiny_data)
    expected_loss = teacher_forced_loss(model, vocab, tuned_cache, dataset, test)
    frozen_loss = teacher_forced_loss(
        model, vocab, load_feature_cache(whole / "features"), dataset, test
    )
    assert results["greedy"]["test_loss"] == round(expected_loss, 4) != round(frozen_loss, 4)


def test_attention_fine_tunes_from_a_pooled_cache(tiny_data, tiny_run, tmp_path):
    """The photos go through the encoder, so the decoder's layout comes from the encoder
    (a grid here) whatever the cache holds; the cache only says which photos were readable."""
    run = _fresh_run(tiny_data, tiny_run, tmp_path)
    result = _fine_tune(tiny_data, run, 1, decoder="attention")
    checkpoint = read_checkpoint(result.best_checkpoint)
    assert checkpoint["model_config"]["decoder"] == "attention"
    captioner = Captioner.from_files(result.best_checkpoint, run / "vocab.pkl")
    photo = sorted((tiny_data / "Images").iterdir())[0]
    assert captioner.extractor.layout == "grid" and captioner([photo])[0]


def test_encode_images_gives_the_extractors_features(tiny_data):
    extractor = FeatureExtractor(
        "efficientnet_lite0",
        torch.device("cpu"),
        build_encoder("efficientnet_lite0", pretrained=False, grid=True),
        layout="grid",
    )
    names = sorted(p.name for p in (tiny_data / "Images").iterdir())[:3]
    cache = encode_images(extractor, tiny_data / "Images", names, batch_size=2)
    expected = extractor([open_image(tiny_data / "Images" / n) for n in names])  # (3, 49, 1280)
    assert cache.grid == (7, 7) and cache.encoder == "efficientnet_lite0"
    torch.testing.assert_close(cache.batch([0, 1, 2], "grid"), expected.half().float())
    torch.testing.assert_close(cache.batch([2], "pooled"), expected[2:].half().float().mean(1))


def test_fine_tuning_leaves_out_what_extraction_refused(tiny_data, tiny_run, tmp_path):
    """A FIFO and a long thin photo (8000 x 1: 2.8 GB once resized) are skipped and counted by
    extraction, so fine-tuning leaves them out as it leaves out unreadable photos; read anyway,
    each is one line naming it, with no hang and no 2.8 GB."""
    dataset = load_dataset(tiny_data)
    names = sorted(dataset.images)[:4]
    folder = tmp_path / "Images"
    folder.mkdir()
    for name in names[2:]:
        (folder / name).write_bytes((dataset.image_dir / name).read_bytes())
    Image.new("RGB", (8000, 1)).save(folder / names[0], format="JPEG")
    os.rename(make_fifo(tmp_path), folder / names[1])
    photos = dataclasses.replace(dataset.subset(names), image_dir=folder)
    with pytest.warns(UserWarning, match="2 unreadable image"):
        returns_within(
            60, extract_features, folder, names, tmp_path / "f", "efficientnet_lite0", num_workers=0
        )
    cache = load_feature_cache(tmp_path / "f")
    vocab = Vocabulary.load(tiny_run / "vocab.pkl")
    transform = image_transform(ENCODERS["efficientnet_lite0"].preprocessing, augment=False)
    assert ImageCaptions(photos, names, vocab, 20, transform, cache.__contains__).names == names[2:]
    every = ImageCaptions(photos, names, vocab, 20, transform)
    for row, problem in enumerate(["too long and thin", "not a regular file"]):
        with pytest.raises(StorytellerError, match=f"{names[row]} for fine-tuning: .*{problem}"):
            returns_within(30, every.__getitem__, row)


def test_tampered_encoder_weights_are_one_line_errors(tiny_data, tiny_run, tmp_path):
    run = _fresh_run(tiny_data, tiny_run, tmp_path)
    result = _fine_tune(tiny_data, run, 1)
    checkpoint = read_checkpoint(result.best_checkpoint)
    name = next(k for k, v in checkpoint[ENCODER_WEIGHTS].items() if v.dim() == 4)
    cases = {
        "missing": lambda c: c.pop(ENCODER_WEIGHTS),
        "reshaped": lambda c: c[ENCODER_WEIGHTS].__setitem__(name, torch.zeros(1)),
        "nan": lambda c: c[ENCODER_WEIGHTS][name].fill_(float("nan")),
    }
    for case, tamper in cases.items():
        bad = {**checkpoint, ENCODER_WEIGHTS: dict(checkpoint[ENCODER_WEIGHTS])}
        bad[ENCODER_WEIGHTS][name] = checkpoint[ENCODER_WEIGHTS][name].clone()
        tamper(bad)
        path = tmp_path / f"{case}.pth"
        torch_save_atomic(bad, path)
        with pytest.raises(ArtefactError) as caught:
            Captioner.from_files(path, run / "vocab.pkl")
        assert "\n" not in str(caught.value) and path.name in str(caught.value), case


def test_cli_flags(tiny_data, tiny_run, tmp_path, capsys):
    run = _fresh_run(tiny_data, tiny_run, tmp_path)
    base = ["train", "--data", str(tiny_data), "--out", str(run), "--epochs", "1"]
    assert main([*base, "--augment"]) == 2
    assert "--augment needs --fine-tune-encoder N" in capsys.readouterr().err
    assert main([*base, "--encoder", "resnet18"]) == 2
    assert "needs --fine-tune-encoder N" in capsys.readouterr().err
    assert main([*base, "--fine-tune-encoder", "40"]) == 2
    assert "efficientnet_lite0 has 18 blocks" in capsys.readouterr().err
    flags = train_flags(TrainConfig(encoder_lr=3e-5, augment=True))
    assert flags[flags.index("--encoder-lr") + 1] == "3e-05" and "--augment" in flags


def test_ddp_fine_tunes_the_encoder_in_two_processes(tiny_data, tiny_run, tmp_path):
    """Two CPU processes (gloo) via launch_training, as notebook 03 starts DDP with
    FINE_TUNE: both share the photos, the trained blocks move, the frozen stem keeps
    ImageNet's weights, and the checkpoint captions with its encoder."""
    from storyteller.pipeline import launch_training

    run = _fresh_run(tiny_data, tiny_run, tmp_path / "ddp")
    result = launch_training(
        2,
        tiny_data,
        run,
        TrainConfig(num_epochs=1, batch_size=20),
        {**SMALL, "decoder": "lstm"},
        device="cpu",
        log=quiet,
        fine_tune_encoder=1,
    )
    checkpoint = read_checkpoint(result.best_checkpoint)
    assert checkpoint["world_size"] == 2 and checkpoint["model_config"]["fine_tuned_blocks"] == 1
    imagenet = build_encoder("efficientnet_lite0").state_dict()
    tuned = checkpoint[ENCODER_WEIGHTS]
    assert torch.equal(
        tuned["trunk.net._conv_stem.weight"], imagenet["trunk.net._conv_stem.weight"]
    )
    assert not torch.equal(
        tuned["trunk.net._conv_head.weight"], imagenet["trunk.net._conv_head.weight"]
    )
    photo = sorted((tiny_data / "Images").iterdir())[0]
    assert Captioner.from_files(result.best_checkpoint, run / "vocab.pkl")([photo])[0]
