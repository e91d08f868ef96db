"""The study's loaders, on small files the tests write, including corrupt ones."""

from __future__ import annotations

import csv
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


def test_npz_labels_are_mapped_to_consecutive_classes(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 2, 3], 10)
    np.savez(tmp_path / "one.npz", x=rng.normal(size=(30, 4)), y=labels)
    split = load_npz(tmp_path / "one.npz")
    assert split.num_classes == 3 and split.class_names == ("1", "2", "3")
    assert set(split.y_train.tolist()) == set(split.y_test.tolist()) == {0, 1, 2}
    np.savez(tmp_path / "gap.npz", x=rng.normal(size=(20, 4)), y=np.repeat([0, 5], 10))
    gap = load_npz(tmp_path / "gap.npz")
    assert gap.num_classes == 2 and gap.class_names == ("0", "5")
    np.savez(
        tmp_path / "test.npz",
        x=rng.normal(size=(12, 4)),
        y=np.repeat([2, 7], 6),
        x_test=rng.normal(size=(4, 4)),
        y_test=np.array([7, 2, 7, 2]),
    )
    given = load_npz(tmp_path / "test.npz")
    assert given.class_names == ("2", "7") and given.y_test.tolist() == [1, 0, 1, 0]


def test_npz_test_label_unseen_in_training(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "unseen.npz",
        x=rng.normal(size=(12, 4)),
        y=np.repeat([0, 1], 6),
        x_test=rng.normal(size=(3, 4)),
        y_test=np.array([0, 4, 1]),
    )
    with pytest.raises(DatasetError, match=r"test label '4' does not occur in the training"):
        load_npz(tmp_path / "unseen.npz")


def _write_csv(path, header, rows, delimiter=","):
    lines = ([delimiter.join(header)] if header else []) + [
        delimiter.join(str(cell) for cell in row) for row in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(labels, width=3, seed=0):
    """One row per label: the label, then ``width`` features, the first equal to the label."""
    rng = np.random.default_rng(seed)
    return [[label, float(label), *np.round(rng.normal(size=width - 1), 3)] for label in labels]


def test_csv_uci_wine_layout_label_first_without_header(tmp_path):
    path = _write_csv(tmp_path / "wine.data", None, _rows(np.repeat([1, 2, 3], 10).tolist()))
    for label_column in (0, "0", -4):
        split = load_csv(path, label_column=label_column)
        assert split.num_classes == 3 and split.num_features == 3
        assert split.class_names == ("1", "2", "3")
        assert len(split.x_train) + len(split.x_test) == 30  # no row taken as a header
        assert set(split.y_train.tolist()) == {0, 1, 2}
        # the first feature is the original label: class k holds the k-th smallest label
        means = [float(split.x_train[split.y_train == k, 0].mean()) for k in range(3)]
        assert means == sorted(means)
    assert load_dataset(f"csv:{path}", label_column="0").num_classes == 3
    with pytest.raises(DatasetError) as err:
        load_csv(path)
    assert str(err.value) == (
        f"csv: {path} has no header row; give the label column with --label-column INDEX "
        "(0 = first column, -1 = last)"
    )


def test_csv_header_with_target_column(tmp_path):
    rows = [[i * 0.1, i, i % 3, i * i] for i in range(30)]
    path = _write_csv(tmp_path / "a.csv", ["f1", "f2", " Target ", "f3"], rows)
    split = load_csv(path)
    assert split.num_features == 3 and split.num_classes == 3
    assert split.class_names == ("0", "1", "2")
    rows = [[i % 2, i * 0.5] for i in range(20)]
    path = _write_csv(tmp_path / "b.csv", ["label", "x"], rows)
    assert load_dataset(f"csv:{path}").num_classes == 2


def test_csv_string_labels_and_label_column_by_name(tmp_path):
    labels = ["M", "B", "B"] * 8
    rows = [[i, label, i * 0.3, (i % 5) * 1.5] for i, label in enumerate(labels)]
    path = _write_csv(tmp_path / "wdbc.csv", ["id", "diagnosis", "radius", "texture"], rows)
    split = load_csv(path, label_column="Diagnosis")
    assert split.class_names == ("B", "M") and split.num_classes == 2
    assert split.num_features == 3
    assert int((split.y_train == 1).sum() + (split.y_test == 1).sum()) == 8  # the M rows
    # the same layout without a header (UCI's wdbc.data): the text label is not a header
    bare = _write_csv(tmp_path / "wdbc.data", None, rows)
    split = load_csv(bare, label_column=1)
    assert len(split.x_train) + len(split.x_test) == 24 and split.class_names == ("B", "M")


def test_csv_label_column_negative_index(tmp_path):
    rows = [[i * 0.1, i * 2, i % 2] for i in range(20)]
    path = _write_csv(tmp_path / "c.csv", None, rows)
    for label_column in (-1, "-1", 2):
        split = load_csv(path, label_column=label_column)
        assert split.num_features == 2 and split.class_names == ("0", "1")


def test_csv_missing_label_column_refused(tmp_path):
    path = _write_csv(tmp_path / "data.csv", ["a", "b", "c"], [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(DatasetError) as err:
        load_csv(path)
    assert str(err.value) == (
        f"csv: {path} has no column named label, target, y or class; name the label column "
        "with --label-column NAME or INDEX (columns: a, b, c)"
    )


def test_csv_unknown_label_column(tmp_path):
    rows = [[i, i * 2, i % 2] for i in range(12)]
    path = _write_csv(tmp_path / "d.csv", ["a", "b", "label"], rows)
    with pytest.raises(DatasetError, match=r"has no column named 'nope' .*columns: a, b, label"):
        load_csv(path, label_column="nope")
    for index in (3, -4, "7"):
        with pytest.raises(DatasetError, match=r"--label-column -?\d is out of range.*0\.\.2"):
            load_csv(path, label_column=index)
    bare = _write_csv(tmp_path / "e.csv", None, rows)
    with pytest.raises(DatasetError, match=r"has no header row, so --label-column 'label'"):
        load_csv(bare, label_column="label")
    with pytest.raises(DatasetError, match="applies to csv: data sets only"):
        load_dataset("digits", label_column=0)
    with pytest.raises(DatasetError, match="applies to csv: data sets only"):
        load_dataset(f"npz:{tmp_path / 'x.npz'}", label_column="label")


def test_csv_continuous_label_refused(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[i, float(v)] for i, v in enumerate(np.round(rng.normal(size=40), 4))]
    path = _write_csv(tmp_path / "price.csv", ["x", "target"], rows)
    with pytest.raises(DatasetError, match=r"40 distinct non-integer numbers.*regression target"):
        load_csv(path)
    few = [[i, 0.5 + i % 2] for i in range(12)]  # a few non-integer values are classes
    split = load_csv(_write_csv(tmp_path / "few.csv", ["x", "y"], few))
    assert split.class_names == ("0.5", "1.5")


def test_csv_class_counts(tmp_path):
    rows = [[i, i % 2] for i in range(20)] + [[7, 2], [8, 2]]
    path = _write_csv(tmp_path / "small.csv", ["x", "label"], rows)
    with pytest.raises(DatasetError, match=r"class '2' \(2 examples\) cannot be split.*at least 3"):
        load_csv(path)
    path = _write_csv(tmp_path / "one.csv", ["x", "label"], [[i, 4] for i in range(9)])
    with pytest.raises(DatasetError, match="label '4'; a classifier needs at least 2 classes"):
        load_csv(path)


def test_csv_non_numeric_feature_cell(tmp_path):
    rows = [[i, i * 2, i % 2] for i in range(10)]
    rows[1][1] = "x"  # file row 3 (the header is row 1)
    path = _write_csv(tmp_path / "text.csv", ["a", "b", "label"], rows)
    with pytest.raises(DatasetError, match=r"row 3, column 1 \('b'\): 'x' is not a finite"):
        load_csv(path)
    rows[1][1], rows[2][0] = 1, ""
    path = _write_csv(tmp_path / "hole.csv", ["a", "b", "label"], rows)
    with pytest.raises(DatasetError, match=r"row 4, column 0 \('a'\) is empty"):
        load_csv(path)
    rows[2][0] = "nan"
    path = _write_csv(tmp_path / "nan.csv", None, rows)
    with pytest.raises(DatasetError, match=r"row 3, column 0: 'nan' is not a finite number"):
        load_csv(path, label_column=-1)
    rows[2][0], rows[4][2] = 1, ""
    path = _write_csv(tmp_path / "nolabel.csv", ["a", "b", "label"], rows)
    with pytest.raises(DatasetError, match=r"row 6: the label cell \(column 2 \('label'\)\)"):
        load_csv(path)


def test_csv_semicolons_bom_and_trailing_comma(tmp_path):
    rows = [[i * 0.1, i, 3 + i % 3] for i in range(30)]
    path = _write_csv(
        tmp_path / "winequality.csv", ['"fixed acidity"', "b", '"quality"'], rows, ";"
    )
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    split = load_csv(path, label_column="quality")
    assert split.num_features == 2 and split.class_names == ("3", "4", "5")
    # Kaggle's breast-cancer data.csv ends every line with a comma: an empty column, ignored
    trailing = [[i, "MB"[i % 2], i * 0.5, ""] for i in range(12)]
    path = _write_csv(tmp_path / "data.csv", ["id", "diagnosis", "radius", ""], trailing)
    split = load_csv(path, label_column="diagnosis")
    assert split.num_features == 2 and split.class_names == ("B", "M")


def test_csv_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("\n \n")
    with pytest.raises(DatasetError, match="is empty"):
        load_csv(tmp_path / "empty.csv")
    (tmp_path / "ragged.csv").write_text("1,2,0\n1,0\n")
    with pytest.raises(DatasetError, match="row 2 has 2 columns, expected 3"):
        load_csv(tmp_path / "ragged.csv", label_column=-1)
    (tmp_path / "header.csv").write_text("a,label\n")
    with pytest.raises(DatasetError, match="has a header row but no data rows"):
        load_csv(tmp_path / "header.csv")
    with pytest.raises(DatasetError, match="cannot read"):
        load_csv(tmp_path / "missing.csv")


def test_csv_breast_cancer_from_scikit_learn(tmp_path):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_breast_cancer()
    path = tmp_path / "breast_cancer.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*bunch.feature_names, "target"])
        for features, target in zip(bunch.data, bunch.target, strict=True):
            writer.writerow([*(repr(float(v)) for v in features), int(target)])
    split = load_dataset(f"csv:{path}")
    assert split.num_classes == 2 and split.num_features == 30
    assert split.class_names == ("0", "1")
    assert len(split.x_train) + len(split.x_test) == 569


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
