"""Image files -> preprocessed pixel batches for feature extraction, decoded one of two ways
(``decode_on``): ``"cpu"``, PIL in the DataLoader workers, or ``"device"``, workers read the
bytes and the main process decodes a batch of JPEGs on the encoder's device (nvJPEG on a GPU,
where the PIL path ran at 4 % of ResNet50's speed). What the device decoder should not take
(PNG, CMYK, truncated files) or fails on goes through PIL. An unreadable image comes out as
zeros with ``ok=False``, never an error.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import StorytellerError
from .encoder_specs import DECODE_CHOICES
from .images import check_size, open_image, open_regular

EXIF_ORIENTATION = 0x0112


def _pil_pixels(transform: Callable, source) -> torch.Tensor | None:
    """PIL's path for a file or its bytes -> (3, crop, crop), ``None`` if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return transform(open_image(source))
    except Exception:  # truncated, not an image, too large, a FIFO, ...
        return None


class _ImageFolder(Dataset):
    """Images by name; an unreadable file yields zeros and ``ok=False`` instead of crashing."""

    def __init__(self, image_dir: Path, names: Sequence[str], transform: Callable, crop: int):
        self.image_dir, self.names, self.transform, self.crop = image_dir, names, transform, crop

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        pixels = _pil_pixels(self.transform, self.image_dir / self.names[i])
        if pixels is None:
            return torch.zeros(3, self.crop, self.crop), False
        return pixels, True


def _jpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation (1-8) of a JPEG the device decoder can take, from the header
    alone; ``None`` (PIL's path) for another format, CMYK (nvJPEG has no CMYK output) or no
    end-of-image marker (truncated: a GPU decoder might make it half grey, PIL refuses it).
    """
    if data[:2] != b"\xff\xd8" or b"\xff\xd9" not in data[-32:]:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: PIL's path warns, not here
        with Image.open(io.BytesIO(data)) as image:
            check_size(*image.size)
            if image.format not in ("JPEG", "MPO") or image.mode not in ("RGB", "L"):
                return None
            return int(image.getexif().get(EXIF_ORIENTATION, 1))


def apply_exif_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn an image upright as PIL's ``ImageOps.exif_transpose`` does, on any device
    (``decode_jpeg`` applies EXIF only on the CPU): (C, H, W) -> (C, H, W), or (C, W, H) for
    orientations 5-8."""
    if orientation == 2:  # mirrored
        return image.flip(-1)
    if orientation == 3:  # upside down
        return image.flip(-2, -1)
    if orientation == 4:  # mirrored upside down
        return image.flip(-2)
    if orientation == 5:  # PIL's TRANSPOSE
        return image.transpose(-2, -1)  # (C, W, H)
    if orientation == 6:  # rotated: turn 90 degrees clockwise
        return torch.rot90(image, -1, dims=(-2, -1))  # (C, W, H)
    if orientation == 7:  # PIL's TRANSVERSE
        return image.transpose(-2, -1).flip(-2, -1)  # (C, W, H)
    if orientation == 8:  # rotated: turn 90 degrees anticlockwise
        return torch.rot90(image, 1, dims=(-2, -1))  # (C, W, H)
    return image


class _ImageBytes(_ImageFolder):
    """Worker half of ``decode_on="device"``: ``("jpeg", bytes, orientation)``, or for
    another file ``("pixels", (3, crop, crop), ok)`` from the PIL path."""

    def __getitem__(self, i: int):
        try:
            with open_regular(self.image_dir / self.names[i]) as file:
                data = file.read()
            orientation = _jpeg_orientation(data)
        except Exception:  # not a regular file, broken header, too large: the PIL path reports it
            orientation = None
        if orientation is None:
            pixels, ok = super().__getitem__(i)
            return "pixels", pixels, ok
        return "jpeg", data, orientation


def _pack_batch(items: list) -> tuple[torch.Tensor, list]:
    """Collate for :class:`_ImageBytes`: the JPEG bytes packed in one blob (total,) uint8,
    since each tensor is its own shared-memory block (64 cost 14 ms a batch, one 1.6 ms), and
    per image ``("jpeg", start, end, orientation)`` or the worker's ``("pixels", ...)``.
    """
    sizes = [len(item[1]) if item[0] == "jpeg" else 0 for item in items]
    blob = torch.empty(sum(sizes), dtype=torch.uint8)  # (total,)
    view, start, entries = blob.numpy(), 0, []
    for item, size in zip(items, sizes, strict=True):
        if item[0] != "jpeg":
            entries.append(item)
            continue
        view[start : start + size] = np.frombuffer(item[1], dtype=np.uint8)
        entries.append(("jpeg", start, start + size, item[2]))
        start += size
    return blob, entries


def _decode_jpeg_accepts_list() -> bool:
    """``decode_jpeg`` takes a list (one batched nvJPEG call) from torchvision 0.19 on."""
    import torchvision

    major, minor = (int(part) for part in torchvision.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (0, 19)


def device_decode_available() -> bool:
    """Whether this torchvision still decodes JPEGs (deprecated in 0.29 for TorchCodec)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_decode_on(decode_on: str, device: torch.device) -> str:
    if decode_on not in DECODE_CHOICES:
        raise StorytellerError(
            f"unknown decode_on '{decode_on}'; choose one of: {', '.join(DECODE_CHOICES)}"
        )
    if decode_on == "auto":
        return "device" if device.type == "cuda" and device_decode_available() else "cpu"
    if decode_on == "device" and not device_decode_available():
        raise StorytellerError(
            "decode_on='device' needs torchvision.io.decode_jpeg; use decode_on='cpu'"
        )
    return decode_on


class _DeviceDecoder:
    """Main-process half of ``decode_on="device"``: a packed batch -> pixels on the device,
    the JPEGs decoded in one call; one the decoder rejects is decoded again by PIL."""

    def __init__(self, preprocessing, transform: Callable, device: torch.device):
        self.preprocessing, self.transform, self.device = preprocessing, transform, device
        self.batched = _decode_jpeg_accepts_list()
        self.pil_fallbacks = 0  # images PIL decoded instead (unreadable ones not counted)

    def _decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Bytes (n,) uint8 -> (3, H, W) uint8 on the device, ``None`` if rejected."""
        from torchvision.io import ImageReadMode, decode_jpeg

        def decode(data):
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: TorchCodec
            if self.batched and len(datas) > 1:
                try:
                    return list(decode(datas))
                except Exception:  # one bad file fails the whole call: find it, one by one
                    pass
            images: list[torch.Tensor | None] = []
            for data in datas:
                try:
                    images.append(decode(data))
                except Exception:
                    images.append(None)
            return images

    def __call__(self, batch: tuple[torch.Tensor, list]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> pixels (B, 3, crop, crop) float32 on the device, ok (B,) bool."""
        blob, entries = batch
        crop = self.preprocessing.crop
        pixels = torch.zeros(len(entries), 3, crop, crop, device=self.device)  # (B, 3, crop, crop)
        ok = torch.ones(len(entries), dtype=torch.bool)
        rows = [row for row, entry in enumerate(entries) if entry[0] == "jpeg"]
        datas = [blob[entries[row][1] : entries[row][2]] for row in rows]  # (n_i,) uint8 each
        decoded = self._decode(datas) if rows else []
        upright, upright_rows = [], []
        for row, data, image in zip(rows, datas, decoded, strict=True):
            if image is not None and image.dim() == 3 and image.shape[0] == 3:
                upright.append(apply_exif_orientation(image, entries[row][3]))  # (3, H, W)
                upright_rows.append(row)
                continue
            fallback = _pil_pixels(self.transform, io.BytesIO(data.numpy().tobytes()))
            if fallback is None:
                ok[row] = False
            else:
                pixels[row] = fallback.to(self.device)
                self.pil_fallbacks += 1
        if upright:
            pixels[upright_rows] = self.preprocessing.tensor_transform(upright)
        for row, entry in enumerate(entries):
            if entry[0] == "pixels":  # preprocessed by PIL in the worker
                pixels[row] = entry[1].to(self.device)
                ok[row] = bool(entry[2])
                self.pil_fallbacks += bool(entry[2])
        return pixels, ok


def image_dataset(
    decode_on: str,
    image_dir: Path,
    names: Sequence[str],
    transform: Callable,
    preprocessing,
    device: torch.device,
) -> tuple[Dataset, Callable | None, _DeviceDecoder | None]:
    """The dataset, its collate function and the main-process decoder of each batch into
    (pixels, ok) for ``decode_on``; ``"cpu"`` needs neither: its batches are (pixels, ok)."""
    if decode_on == "cpu":
        return _ImageFolder(image_dir, names, transform, preprocessing.crop), None, None
    dataset = _ImageBytes(image_dir, names, transform, preprocessing.crop)
    return dataset, _pack_batch, _DeviceDecoder(preprocessing, transform, device)
