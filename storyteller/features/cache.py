"""Extract each image's features with a frozen CNN, once, into a resumable cache (its files:
:mod:`.cache_format`; image files into pixels: :mod:`.batch_decoding`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ..errors import StorytellerError
from ..progress import progress
from ..run_folder import FEATURES_FILE, INDEX_FILE
from ..runtime import autocast, disk_full_is_an_error, get_device, write_json
from .batch_decoding import image_dataset, resolve_decode_on
from .cache_format import CACHE_FILES, non_finite_report, open_cache, to_float16
from .encoder_specs import check_layout, get_encoder_spec
from .encoders import build_encoder, with_layout
from .extraction_sizes import extraction_sizes
from .images import load_rgb, open_image


class FeatureExtractor:
    """A frozen encoder and its preprocessing on one device: pictures -> (B, dim), or
    (B, h*w, dim) with ``layout="grid"`` (a given ``encoder`` gets the head for ``layout``)."""

    def __init__(
        self,
        encoder_name: str,
        device: torch.device | None = None,
        encoder=None,
        layout: str = "pooled",
    ):
        self.spec = get_encoder_spec(encoder_name)
        self.layout = check_layout(layout)
        self.device = device or get_device()
        self.transform = self.spec.preprocessing.transform()
        if encoder is None:
            encoder = build_encoder(encoder_name, grid=layout == "grid")
        encoder = with_layout(encoder, encoder_name, layout)
        self.encoder = encoder.to(self.device, memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def encode_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (B, 3, H, W) -> features (B, dim) or (B, h*w, dim) float32 on the CPU."""
        pixels = pixels.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        with autocast(self.device):
            features = self.encoder(pixels)  # (B, dim) or (B, h*w, dim)
        return features.float().cpu()

    def __call__(self, images: Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """PIL images (any mode) or image files -> (B, dim) or (B, h*w, dim)."""
        pictures = [
            load_rgb(im) if isinstance(im, Image.Image) else open_image(im) for im in images
        ]
        pixels = torch.stack([self.transform(picture) for picture in pictures])  # (B, 3, H, W)
        return self.encode_batch(pixels)


def extract_features(
    image_dir: str | Path,
    names: Sequence[str],
    out_dir: str | Path,
    encoder_name: str,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: torch.device | None = None,
    overwrite: bool = False,
    encoder: torch.nn.Module | None = None,
    on_batch: Callable[[int], None] | None = None,
    decode_on: str = "auto",
    layout: str = "pooled",
) -> Path:
    """Encode every image in ``names`` into ``out_dir/features.npy`` (+ ``features.json``),
    resuming an interrupted run. ``on_batch(rows_done)`` runs after each saved batch; sizes
    left ``None`` follow the hardware (:func:`.extraction_sizes.extraction_sizes`).
    """
    check_layout(layout)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(set(names))
    if not names:
        raise StorytellerError("no images to extract features from")
    array_path = out_dir / FEATURES_FILE
    with disk_full_is_an_error(f"{CACHE_FILES} in {out_dir}"):
        opened = open_cache(image_dir, names, out_dir, encoder_name, layout, overwrite)
    if opened is None:  # complete
        return array_path
    meta, array = opened

    device = device or get_device()
    decode_on = resolve_decode_on(decode_on, device)
    extractor = FeatureExtractor(encoder_name, device, encoder, layout)
    # A cache begun before the decoders were recorded was made by PIL.
    decoders = meta.setdefault("decode", ["pil"] if meta["done"] else [])
    decoder_name = "pil" if decode_on == "cpu" else f"torchvision:{device.type}"
    if decoder_name not in decoders:
        decoders.append(decoder_name)
    loader, decoder = _loader(
        Path(image_dir), names[meta["done"] :], extractor, decode_on, batch_size, num_workers
    )
    _fill(array, meta, names, loader, decoder, extractor, out_dir, on_batch)
    if meta["unreadable"]:
        warnings.warn(
            f"{len(meta['unreadable'])} unreadable image(s) skipped "
            f"(e.g. {meta['unreadable'][:3]}); their captions are left out of training",
            stacklevel=2,
        )
    if meta["non_finite"]:
        warnings.warn(non_finite_report(meta), stacklevel=2)
    return array_path


def _loader(
    image_dir: Path,
    names: list[str],
    extractor: FeatureExtractor,
    decode_on: str,
    batch_size: int | None,
    num_workers: int | None,
) -> tuple[DataLoader, Callable | None]:
    """The DataLoader over ``names`` and, for ``decode_on="device"``, its batches' decoder."""
    on_gpu = extractor.device.type == "cuda"
    sizes = extraction_sizes(on_gpu)
    dataset, collate, decoder = image_dataset(
        decode_on,
        image_dir,
        names,
        extractor.transform,
        extractor.spec.preprocessing,
        extractor.device,
    )
    loader = DataLoader(
        dataset,
        batch_size=sizes.batch_size if batch_size is None else batch_size,
        num_workers=sizes.num_workers if num_workers is None else num_workers,
        collate_fn=collate,
        pin_memory=on_gpu and decoder is None,  # file bytes gain nothing from pinning
    )
    return loader, decoder


def _fill(
    array: np.memmap,
    meta: dict,
    names: list[str],
    loader: DataLoader,
    decoder: Callable | None,
    extractor: FeatureExtractor,
    out_dir: Path,
    on_batch: Callable[[int], None] | None,
) -> None:
    """Encode the loader's batches into ``array`` from row ``meta["done"]`` on, saving the
    rows, then the index, after each batch."""
    encoder_name, layout, row = meta["encoder"], extractor.layout, meta["done"]
    with progress(
        total=len(names), initial=row, desc=f"features ({encoder_name})", unit="img"
    ) as bar:
        for batch in loader:
            pixels, ok = batch if decoder is None else decoder(batch)  # (B, 3, crop, crop), (B,)
            features = extractor.encode_batch(pixels)  # (B, dim) or (B, h*w, dim)
            if features.shape[1:] != array.shape[1:]:
                raise StorytellerError(
                    f"'{encoder_name}' gave {layout} features of shape {tuple(features.shape[1:])}"
                    f" per image, the cache holds {array.shape[1:]}: was the encoder or its "
                    "preprocessing changed? Pass --overwrite to start again"
                )
            rows = slice(row, row + len(features))
            block = to_float16(features, names[rows], meta)  # (B, dim) or (B, h*w, dim)
            meta["unreadable"] += [names[row + i] for i in torch.nonzero(~ok).flatten().tolist()]
            row += len(features)
            if decoder is not None:
                meta["pil_fallbacks"] = meta.get("pil_fallbacks", 0) + decoder.pil_fallbacks
                decoder.pil_fallbacks = 0
            meta["done"] = row  # written after the rows it counts: a kill loses one batch at most
            with disk_full_is_an_error(f"{CACHE_FILES} in {out_dir}"):
                array[rows] = block
                array.flush()
                write_json(out_dir / INDEX_FILE, meta)
            bar.update(len(features))
            if on_batch is not None:
                on_batch(row)
