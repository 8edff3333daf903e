"""Preprocessing shared by training, evaluation, the pipeline and the CLI.

One place for: reading x-ray files into grayscale intensities in [0, 1], resizing to the
model's square input, mapping intensities to the model's range, and the exact mapping of
``(x, y)`` pixel coordinates between the original image frame and the model frame.

Frames: pixel ``(row i, column j)`` has its centre at ``(x, y) = (j, i)`` in both frames.
Resizing a ``W × H`` image to ``S × S`` (centre-aligned, as PIL and ``align_corners=False``)
maps ``x_model = (x + 0.5) · S / W − 0.5`` and ``y_model = (y + 0.5) · S / H − 0.5``.

Resizing is exact area averaging (:func:`resize_area`): each output pixel is the mean of the
input over the rectangle it covers, fractional pixels weighted by their covered area. Area
averages compose exactly: resizing to ``P`` and then to ``S`` gives the same image as resizing
to ``S`` directly whenever ``P`` is a multiple of ``S``. That is what lets prepared datasets
store images pre-resized to ``P`` (fast loading) while evaluation sees, up to 16-bit
rounding, the very pixels the pipeline computes from the original file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .errors import UserInputError

#: Refuse images with more pixels than this (decompression bombs); 1935×2400 is 4.6 M.
MAX_IMAGE_PIXELS = 200_000_000
DICOM_EXTENSIONS = (".dcm", ".dicom")
#: Every file type the readers, the pipeline and the CLI accept.
IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", *DICOM_EXTENSIONS)
#: Resampling methods of :func:`resize_image`: ``area`` (default) and ``bilinear`` (PIL's
#: antialiased bilinear, used by models saved before ``area`` existed).
RESAMPLE_METHODS = ("area", "bilinear")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageReadError(UserInputError):
    """An image file could not be read; the message names the file and the problem."""


def is_dicom_path(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(DICOM_EXTENSIONS)


def to_grayscale01(image: Image.Image | np.ndarray, source: str = "image") -> np.ndarray:
    """Convert a PIL image or array to a float32 ``[H, W]`` array of intensities in [0, 1].

    8-bit, 16-bit and 32-bit integer, float, RGB(A), LA and palette images are accepted;
    colour is converted to luminance and alpha is dropped. Integer arrays are scaled by
    their type's maximum; float arrays are min-max scaled when they leave [0, 1].
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ImageReadError(f"{source}: zero-size image")
        mode = image.mode
        if mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "LAB", "HSV", "PA", "RGBX", "La"):
            arr = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        elif mode.startswith("I;16"):
            arr = np.asarray(image, dtype=np.float32) / 65535.0
        elif mode in ("I", "F"):
            arr = np.asarray(image, dtype=np.float32)
            # 16-bit PNGs open as mode I; scale by the smallest integer range that holds them.
            if mode == "I":
                arr = arr / (65535.0 if arr.max(initial=0) <= 65535 else float(2**32 - 1))
            else:
                arr = _minmax_if_needed(arr)
        else:
            raise ImageReadError(f"{source}: unsupported image mode {mode!r}")
        return np.ascontiguousarray(arr, dtype=np.float32)
    arr = np.asarray(image)
    dtype = arr.dtype
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        # Luminance (ITU-R 601, as PIL's "L"); alpha is dropped.
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3].astype(np.float32) @ _LUMA
    if arr.ndim != 2:
        raise ImageReadError(f"{source}: expected a 2-D grayscale or H×W×C colour array, got shape {arr.shape}")
    if arr.size == 0:
        raise ImageReadError(f"{source}: zero-size image")
    if dtype.kind == "b":
        return arr.astype(np.float32)
    if dtype.kind in "ui":
        return (arr.astype(np.float32) / float(np.iinfo(dtype).max)).astype(np.float32)
    return _minmax_if_needed(arr.astype(np.float32))


def _minmax_if_needed(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if lo >= 0.0 and hi <= 1.0:
        return arr
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(W, H)`` of an image file from its header (a DICOM file is read whole)."""
    if is_dicom_path(path):
        h, w = read_dicom(path)[0].shape
        return int(w), int(h)
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as err:  # PIL raises many types for corrupt files
        raise ImageReadError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (PNG, JPEG, BMP, TIFF, ...; DICOM via :func:`read_dicom`) as
    float32 ``[H, W]`` intensities in [0, 1]. Raises :class:`ImageReadError` naming the file."""
    path = os.fspath(path)
    if is_dicom_path(path):
        return read_dicom(path)[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            try:
                with Image.open(path) as img:
                    img.load()
                    return to_grayscale01(img, source=path)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except ImageReadError:
        raise
    except FileNotFoundError as err:
        raise ImageReadError(f"{path}: file not found") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(f"{path}: image too large, refused as a possible decompression bomb ({err})") from err
    except Exception as err:  # PIL raises many types for corrupt files
        raise ImageReadError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Read a DICOM file: intensities in [0, 1] and the pixel spacing ``(sx, sy)`` in mm.

    Applies rescale slope/intercept and inverts MONOCHROME1. Needs ``pydicom``
    (``pip install hf-landmark[dicom]``).
    """
    path = os.fspath(path)
    try:
        import pydicom
    except ImportError as err:
        raise ImageReadError(f"{path}: reading DICOM needs pydicom (pip install 'hf-landmark[dicom]')") from err
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float32)
    except Exception as err:
        raise ImageReadError(f"{path}: cannot read DICOM ({type(err).__name__}: {err})") from err
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(f"{path}: expected a single 2-D grayscale DICOM frame, got shape {arr.shape}")
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    spacing = None
    ps = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
    if ps is not None and len(ps) == 2:
        # DICOM PixelSpacing is (row spacing, column spacing) = (sy, sx).
        spacing = (float(ps[1]), float(ps[0]))
    return arr.astype(np.float32), spacing


def load_image(image, source: str | None = None) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """Any supported input → ``(intensities [H, W] in [0, 1], spacing (sx, sy) mm or None, name)``.

    ``image``: a file path (PNG, JPEG, BMP, TIFF, 8/16-bit; DICOM with its header spacing), a
    PIL image, a numpy array or a torch tensor (``[H, W]`` or ``[H, W, C]``)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if is_dicom_path(path):
            pixels, spacing = read_dicom(path)
            return pixels, spacing, path
        return read_image(path), None, path
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return to_grayscale01(image, source=source or "image"), None, source or "image"


def _area_last_axis(arr: np.ndarray, n_out: int) -> np.ndarray:
    """Area-average the last axis of a 2-D array to ``n_out`` cells (float64): output cell k
    is the mean of the piecewise-constant input over [k·n/n_out, (k+1)·n/n_out)."""
    rows, n_in = arr.shape
    # The integral at integer positions, F(i) = sum(arr[:, :i]), then at the cell edges.
    integral = np.zeros((rows, n_in + 1), dtype=np.float64)
    np.cumsum(arr, axis=1, dtype=np.float64, out=integral[:, 1:])
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo = np.minimum(np.floor(edges).astype(np.int64), n_in - 1)
    at_edges = integral[:, lo] + (edges - lo) * arr[:, lo]
    return np.diff(at_edges, axis=1) / (n_in / n_out)


def resize_area(image01: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Exact area-average resize of ``[H, W]`` to ``size = (W, H)`` (up or down); see the
    module docstring for why (it composes exactly through multiples of the target size)."""
    w, h = size
    across = _area_last_axis(np.asarray(image01, dtype=np.float32), w)
    return np.ascontiguousarray(_area_last_axis(across.T, h).T, dtype=np.float32)


def resize_image(image01: np.ndarray, size: int | tuple[int, int], method: str = "area") -> np.ndarray:
    """Resize ``[H, W]`` intensities to ``size`` (an int for square, or ``(W, H)``),
    centre-aligned (see the module docstring). ``method``: ``area`` (exact area averaging) or
    ``bilinear`` (PIL's antialiased bilinear filter)."""
    w, h = (size, size) if isinstance(size, int) else size
    if image01.shape == (h, w):
        return image01.astype(np.float32, copy=False)
    if method == "area":
        return resize_area(image01, (w, h))
    if method == "bilinear":
        img = Image.fromarray(np.ascontiguousarray(image01, dtype=np.float32), mode="F")
        return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    raise ValueError(f"resample must be one of {RESAMPLE_METHODS}, got {method!r}")


def to_uint8(image01: np.ndarray) -> np.ndarray:
    return (np.clip(image01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_uint16(image01: np.ndarray) -> np.ndarray:
    """Intensities in [0, 1] → 16-bit (rounding error at most 7.6e-6, far below 8-bit's 2e-3)."""
    return (np.clip(image01, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)


def original_to_model(xy, original_size: Sequence[float], model_size: int):
    """Map ``(x, y)`` from original pixels to model pixels. ``original_size`` is ``(W, H)``.

    Works on numpy arrays and torch tensors of shape ``[..., 2]``; ``original_size`` may be
    ``[..., 2]`` broadcastable to the leading dimensions (add a landmark axis yourself).
    """
    scale = model_size / _as_like(original_size, xy)
    return (xy + 0.5) * scale - 0.5


def model_to_original(xy, original_size: Sequence[float], model_size: int):
    """Inverse of :func:`original_to_model`."""
    scale = _as_like(original_size, xy) / model_size
    return (xy + 0.5) * scale - 0.5


def _as_like(value, ref):
    if isinstance(ref, torch.Tensor):
        return torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
    return np.asarray(value, dtype=np.float64)


def spacing_pair(spacing) -> tuple[float, float]:
    """A spacing given as one number (isotropic) or ``(sx, sy)`` → ``(sx, sy)`` in mm per pixel."""
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    return float(s[0]), float(s[-1])


def to_pixel_values(images01, pixel_range: Sequence[float] = (-1.0, 1.0)):
    """Map intensities in [0, 1] linearly to the model's range ``[lo, hi]``."""
    lo, hi = float(pixel_range[0]), float(pixel_range[1])
    return images01 * (hi - lo) + lo


def crop_patches(images: torch.Tensor, origins: torch.Tensor, size: int, fill: float) -> torch.Tensor:
    """Square crops without interpolation: ``images`` ``[B, C, H, W]``, ``origins`` ``[B, K, 2]``
    integer (x, y) of each crop's top-left pixel (anywhere, also outside the image) →
    ``[B, K, C, size, size]`` where crop pixel ``(i, j)`` is image pixel ``(x + j, y + i)``;
    pixels beyond the image are ``fill``."""
    b, c, h, w = images.shape
    origins = origins.long()
    # Pad by the farthest any crop reaches outside, then gather rows and columns.
    pad = int(
        max(
            0,
            -origins.min().item(),
            (origins[..., 0] + size - w).max().item(),
            (origins[..., 1] + size - h).max().item(),
        )
    )
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), value=fill) if pad else images
    offs = torch.arange(size, device=images.device)
    cols = (origins[..., 0, None] + pad + offs)[:, :, None, None, :]  # [B, K, 1, 1, size]
    rows = (origins[..., 1, None] + pad + offs)[:, :, None, :, None]  # [B, K, 1, size, 1]
    batch = torch.arange(b, device=images.device)[:, None, None, None, None]
    chan = torch.arange(c, device=images.device)[None, None, :, None, None]
    return padded[batch, chan, rows, cols]
