"""Dataset files to arrays: IDX (MNIST format), CIFAR-10 and image folders (through torchvision), npz.

Every reader returns images as float32 NCHW in [0, 1] and labels as int64; splitting is tasks.py's job.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluators.errors import SlimsweepError

# The IDX format's element types: the third byte of the magic number -> big-endian numpy dtype.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


class DataError(SlimsweepError):
    """A task's data is unusable: a file missing, truncated or in the wrong format, or a plugin's wrong result."""


@dataclass(frozen=True)
class Images:
    """Images (float32 NCHW in [0, 1]) and their labels (int64), with the class names when the files have them."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...] = ()


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (gzip-compressed or raw) as an array of its declared type and shape."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{path}: a damaged or truncated gzip file ({exc})") from None
    magic = raw[:4]
    if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in IDX_TYPES:
        raise DataError(
            f"{path}: not an IDX file: it starts with 0x{magic.hex() or '(empty)'}, and an IDX file starts with "
            "two zero bytes, a type code (0x08 for unsigned bytes) and its number of dimensions, "
            "e.g. 0x00000803 for MNIST images and 0x00000801 for labels"
        )
    dtype, ndim = np.dtype(IDX_TYPES[magic[2]]), magic[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated: the header of a {ndim}-dimensional IDX file needs {header} bytes, "
            f"the file has {len(raw)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: truncated or corrupt: its header declares shape {dims} ({expected} bytes of data), "
            f"the file holds {len(raw) - header} bytes after the header"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def idx_sets(folder: Path) -> dict[str, tuple[Path, Path]]:
    """The image/label file pairs in a folder, by prefix ('t10k', 'train'): *-images-idx3-ubyte[.gz] + labels."""
    images = {p.name.split("-images-idx3-ubyte")[0]: p for p in sorted(folder.glob("*-images-idx3-ubyte*"))}
    labels = {p.name.split("-labels-idx1-ubyte")[0]: p for p in sorted(folder.glob("*-labels-idx1-ubyte*"))}
    unpaired = sorted(set(images) ^ set(labels))
    if unpaired:
        raise DataError(
            f"{folder}: {', '.join(unpaired)}: an images file without its labels file or the reverse; "
            "each set needs PREFIX-images-idx3-ubyte[.gz] and PREFIX-labels-idx1-ubyte[.gz]"
        )
    if not images:
        raise DataError(
            f"{folder}: no IDX files; expected PREFIX-images-idx3-ubyte[.gz] and "
            "PREFIX-labels-idx1-ubyte[.gz] (e.g. t10k-images-idx3-ubyte.gz)"
        )
    return {prefix: (images[prefix], labels[prefix]) for prefix in images}


def read_idx_set(images_path: Path, labels_path: Path) -> Images:
    """An MNIST-format pair: (N, H, W) unsigned-byte images and N labels."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected (N, H, W) unsigned bytes, got {images.dtype} of shape {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{labels_path}: expected one integer label per image (1 dimension), "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return Images((images.astype(np.float32) / 255.0)[:, None, :, :], labels.astype(np.int64))


def read_cifar10(root: Path, *, train: bool, download: bool) -> Images:
    """One CIFAR-10 set (50,000 train / 10,000 test) read by torchvision, whose md5 check guards the files."""
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=train, download=download)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise DataError(
            f"{root}: CIFAR-10 not found or corrupted under {root / CIFAR10.base_folder} ({exc}); "
            "set download: true to fetch it there"
        ) from None
    x = np.ascontiguousarray(np.asarray(ds.data).transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    return Images(x, np.asarray(ds.targets, dtype=np.int64), tuple(ds.classes))


def image_folder(root: Path, *, image_size: int, grayscale: bool):
    """torchvision's ImageFolder over root, each image resized to a square, float32 CHW in [0, 1]."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    steps = [transforms.Resize((image_size, image_size))]
    if grayscale:
        steps.append(transforms.Grayscale(num_output_channels=1))
    steps.append(transforms.ToTensor())
    try:
        return ImageFolder(str(root), transform=transforms.Compose(steps))
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{root}: not an image folder (one sub-folder of images per class): {exc}") from None


def read_images(ds, indices: np.ndarray) -> Images:
    """The chosen samples of an ImageFolder, decoded and stacked."""
    try:
        xs = [ds[int(i)][0].numpy() for i in indices]
    except OSError as exc:  # PIL: an unreadable or truncated image
        raise DataError(f"{ds.root}: an image could not be read: {exc}") from None
    y = np.asarray(ds.targets, dtype=np.int64)[indices]
    return Images(np.stack(xs).astype(np.float32), y, tuple(ds.classes))


def read_npz(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of an .npz file (no pickled objects: allow_pickle stays off)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            present = set(npz.files)
            missing = [k for k in required if k not in present]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {', '.join(missing)}; it holds {', '.join(sorted(present))} "
                    f"and needs {', '.join(required)} (optional: {', '.join(optional)})"
                )
            return {k: npz[k] for k in (*required, *optional) if k in present}
    except (ValueError, OSError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file of plain arrays: {exc}") from None
