"""The study's loaders, on small files the tests write, including corrupt ones."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from labelsmooth.study.data import (
    DatasetError,
    digits_multilabel,
    load_cifar10,
    load_csv,
    load_dataset,
    load_mnist,
    load_npz,
    read_idx,
    synthetic,
)


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(directory, n_train=40, n_test=20, compress=False, labels=None):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 4, 4)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10 if labels is None else labels,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 4, 4)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, array in files.items():
        data = _idx(np.asarray(array))
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx(tmp_path, compress):
    _write_mnist(tmp_path, compress=compress)
    split = load_mnist(tmp_path)
    assert split.x_train.shape == (40, 16) and split.x_test.shape == (20, 16)
    assert split.num_classes == 10 and split.y_train.tolist()[:3] == [0, 1, 2]
    assert abs(float(split.x_train.mean())) < 1e-5  # standardised with training statistics
    assert load_dataset(f"mnist:{tmp_path}").x_train.shape == (40, 16)


def test_mnist_truncated(tmp_path):
    _write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="truncated"):
        load_mnist(tmp_path)


def test_mnist_wrong_magic(tmp_path):
    _write_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
    with pytest.raises(DatasetError, match="not an IDX file.*magic number 1234"):
        load_mnist(tmp_path)


def test_mnist_corrupt_gzip(tmp_path):
    _write_mnist(tmp_path, compress=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(DatasetError, match="corrupt gzip"):
        load_mnist(tmp_path)


def test_mnist_labels_out_of_range_and_count_mismatch(tmp_path):
    _write_mnist(tmp_path, labels=np.full(40, 12))
    with pytest.raises(DatasetError, match=r"label 12 out of range.*\[0, 9\]"):
        load_mnist(tmp_path)
    _write_mnist(tmp_path, labels=np.zeros(39))
    with pytest.raises(DatasetError, match="40 train images but 39 labels"):
        load_mnist(tmp_path)


def test_mnist_missing(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        load_mnist(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no train images file"):
        load_mnist(tmp_path)


def test_read_idx_empty(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty file"):
        read_idx(tmp_path / "empty")


def _cifar_batch(count, labels=None):
    rng = np.random.default_rng(count)
    labels = np.arange(count) % 10 if labels is None else labels
    rows = np.concatenate(
        [np.asarray(labels, dtype=np.uint8)[:, None], rng.integers(0, 256, (count, 3072))], axis=1
    )
    return rows.astype(np.uint8).tobytes()


def test_cifar10_binary(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(_cifar_batch(20))
    (tmp_path / "data_batch_2.bin").write_bytes(_cifar_batch(10))
    (tmp_path / "test_batch.bin").write_bytes(_cifar_batch(10))
    split = load_cifar10(tmp_path)
    assert split.x_train.shape == (30, 3072) and split.x_test.shape == (10, 3072)
    assert split.class_names[0] == "airplane"


def test_cifar10_errors(tmp_path):
    with pytest.raises(DatasetError, match="no data_batch"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_1.bin").write_bytes(_cifar_batch(5)[:-1])
    (tmp_path / "test_batch.bin").write_bytes(_cifar_batch(5))
    with pytest.raises(DatasetError, match="not a multiple of 3073"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_1.bin").write_bytes(_cifar_batch(5, labels=[0, 1, 2, 3, 200]))
    with pytest.raises(DatasetError, match="label 200 out of range"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_1.bin").write_bytes(_cifar_batch(5))
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(DatasetError, match="no test_batch.bin"):
        load_cifar10(tmp_path)


def test_npz_plain_and_medmnist_multilabel(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "plain.npz", x=rng.normal(size=(50, 6)), y=np.arange(50) % 5)
    split = load_npz(tmp_path / "plain.npz")
    assert split.num_classes == 5 and len(split.x_train) + len(split.x_test) == 50
    np.savez(
        tmp_path / "med.npz",
        train_images=rng.integers(0, 256, (30, 8, 8), dtype=np.uint8),
        train_labels=rng.integers(0, 2, (30, 4)),
        val_images=rng.integers(0, 256, (10, 8, 8), dtype=np.uint8),
        val_labels=rng.integers(0, 2, (10, 4)),
        test_images=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
        test_labels=rng.integers(0, 2, (12, 4)),
    )
    med = load_dataset(f"npz:{tmp_path / 'med.npz'}")
    assert med.multilabel and med.num_classes == 4
    assert med.x_train.shape == (40, 64) and med.y_test.shape == (12, 4)
    np.savez(
        tmp_path / "medclass.npz",
        train_images=rng.normal(size=(30, 3)),
        train_labels=(np.arange(30) % 3)[:, None],
    )
    assert not load_npz(tmp_path / "medclass.npz").multilabel


def test_npz_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "keys.npz", a=np.zeros(3))
    with pytest.raises(DatasetError, match="needs arrays x and y.*found a"):
        load_npz(tmp_path / "keys.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4))
    with pytest.raises(DatasetError, match="obj.npz"):
        load_npz(tmp_path / "obj.npz")  # object arrays would need pickle: refused
    np.savez(tmp_path / "neg.npz", x=np.zeros((4, 2)), y=np.array([0, 1, -1, 1]))
    with pytest.raises(DatasetError, match="negative"):
        load_npz(tmp_path / "neg.npz")
    np.savez(tmp_path / "len.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 1]))
    with pytest.raises(DatasetError, match="4 feature rows but 3 labels"):
        load_npz(tmp_path / "len.npz")


def test_csv_header_and_plain(tmp_path):
    rows = ["f1,label,f2"] + [f"{i * 0.1},{i % 3},{i}" for i in range(30)]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    split = load_csv(tmp_path / "a.csv")
    assert split.num_features == 2 and split.num_classes == 3
    (tmp_path / "b.csv").write_text("\n".join(f"{i},{i * 2},{i % 2}" for i in range(20)))
    assert load_dataset(f"csv:{tmp_path / 'b.csv'}").num_classes == 2


def test_csv_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="is empty"):
        load_csv(tmp_path / "empty.csv")
    (tmp_path / "ragged.csv").write_text("1,2,0\n1,0\n")
    with pytest.raises(DatasetError, match="row 2 has 2 columns, expected 3"):
        load_csv(tmp_path / "ragged.csv")
    (tmp_path / "text.csv").write_text("1,2,0\n1,x,1\n")
    with pytest.raises(DatasetError, match="non-numeric"):
        load_csv(tmp_path / "text.csv")
    (tmp_path / "frac.csv").write_text("1,2,0.5\n1,3,1\n")
    with pytest.raises(DatasetError, match="labels must be integers"):
        load_csv(tmp_path / "frac.csv")
    with pytest.raises(DatasetError, match="cannot read"):
        load_csv(tmp_path / "missing.csv")


def test_unknown_dataset():
    with pytest.raises(DatasetError, match=r"unknown dataset 'imagenet'.*digits, synthetic"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")  # a directory is required


def test_builtin_data_sets():
    pytest.importorskip("sklearn")
    digits = load_dataset("digits")
    assert digits.num_classes == 10 and digits.num_features == 64
    assert len(digits.x_train) + len(digits.x_test) == 1797
    attributes = digits_multilabel(digits)
    assert attributes.multilabel and attributes.y_train.shape[1] == 5
    subset = digits.subset_train(100, seed=0)
    assert len(subset.x_train) <= 101 and set(subset.y_train.tolist()) == set(range(10))
    first, second = synthetic(seed=0), synthetic(seed=0)
    assert (first.x_train == second.x_train).all()  # deterministic
