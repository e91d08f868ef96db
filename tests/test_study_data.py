"""The study's loaders, on small files the tests write, including corrupt ones."""

from __future__ import annotations

import csv
import gzip
import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from labelsmooth.study.data import (
    DatasetError,
    Limits,
    digits_multilabel,
    load_cifar10,
    load_csv,
    load_dataset,
    load_mnist,
    load_npz,
    parse_size,
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


# ----------------------------------------------------------------------------------------------
# Untrusted files: sizes checked before decompressing, caps on memory and classes
# ----------------------------------------------------------------------------------------------

SMALL = Limits(max_data_bytes=8 * 1024**2, max_classes=1000)  # 1 Mi values as float64


def _peak_bytes(function):
    """Runs ``function`` (which must raise DatasetError) and returns the peak of the memory
    numpy and Python allocated meanwhile (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as caught:
            function()
        return tracemalloc.get_traced_memory()[1], str(caught.value)
    finally:
        tracemalloc.stop()


def test_npz_over_the_limit_is_refused_from_its_header_before_decompressing(tmp_path):
    # 4 Mi zeros compress to a few KiB: the file is tiny, the array is not
    np.savez_compressed(
        tmp_path / "bomb.npz", x=np.zeros((4096, 1024), np.uint8), y=np.zeros(4096, np.int64)
    )
    assert (tmp_path / "bomb.npz").stat().st_size < 100_000
    peak, message = _peak_bytes(lambda: load_npz(tmp_path / "bomb.npz", limits=SMALL))
    assert "array 'x' of shape (4096, 1024) would take 32.0 MiB in memory" in message
    assert "over the limit of 8.0 MiB" in message and "--max-data-bytes" in message
    assert peak < 1024**2  # the 4 MiB array was never decompressed
    # the same file loads under a higher limit
    np.savez_compressed(tmp_path / "ok.npz", x=np.zeros((64, 4)), y=np.arange(64) % 2)
    assert load_npz(tmp_path / "ok.npz", limits=SMALL).num_classes == 2


def test_npz_limit_counts_every_array_of_the_data_set(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 1000))  # 0.6 Mi values: under 1 Mi alone
    np.savez(tmp_path / "two.npz", x=x, y=np.arange(600) % 2, x_test=x, y_test=np.arange(600) % 2)
    with pytest.raises(DatasetError, match=r"array 'x_test'.*\(with 4.6 MiB before it\)"):
        load_npz(tmp_path / "two.npz", limits=SMALL)


def test_npz_header_declaring_more_than_the_file_holds_is_refused(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (100, 4)}
    )
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 64)  # 8 of 400 values
        archive.writestr("y.npy", header.getvalue())
    with pytest.raises(DatasetError, match=r"array 'x' declares shape \(100, 4\).*truncated"):
        load_npz(tmp_path / "short.npz")


def test_npz_malformed_arrays_are_one_line_errors(tmp_path):
    np.savez(tmp_path / "text.npz", x=np.zeros((6, 2)), y=np.array(list("ababab")))
    with pytest.raises(DatasetError, match=r"array 'y' has dtype <U1; arrays must hold numbers"):
        load_npz(tmp_path / "text.npz")
    np.savez(tmp_path / "scalar.npz", x=np.float64(3.0), y=np.zeros(6))
    with pytest.raises(DatasetError, match=r"no examples \(features of shape \(\)\)"):
        load_npz(tmp_path / "scalar.npz")
    np.savez(tmp_path / "nofeatures.npz", x=np.zeros((6, 0)), y=np.arange(6) % 2)
    with pytest.raises(DatasetError, match="the examples have no features"):
        load_npz(tmp_path / "nofeatures.npz")
    np.save(tmp_path / "plain.npy", np.zeros((6, 2)))
    (tmp_path / "plain.npz").write_bytes((tmp_path / "plain.npy").read_bytes())
    with pytest.raises(DatasetError, match="not a readable .npz file"):
        load_npz(tmp_path / "plain.npz")
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "med.npz",
        train_images=rng.normal(size=(9, 4, 4)),
        train_labels=np.arange(9) % 3,
        val_images=rng.normal(size=(3, 5, 5)),
        val_labels=np.arange(3),
    )
    with pytest.raises(DatasetError, match="train_images has shape .* but val_images"):
        load_npz(tmp_path / "med.npz")
    with zipfile.ZipFile(tmp_path / "notnpy.npz", "w") as archive:
        archive.writestr("x.npy", b"this is not an array")
        archive.writestr("y.npy", b"nor this")
    with pytest.raises(DatasetError, match="array 'x' is not a readable .npy array"):
        load_npz(tmp_path / "notnpy.npz")


def _idx_header(shape, code=0x08):
    return bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", n) for n in shape)


def test_gzipped_idx_declaring_a_huge_shape_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as stream:  # 64 MiB of zeros in a small file
        stream.write(_idx_header((65536, 32, 32)))
        for _ in range(16):
            stream.write(bytes(4 * 1024**2))
    assert path.stat().st_size < 200_000
    peak, message = _peak_bytes(lambda: read_idx(path, limits=SMALL))
    assert "shape (65536, 32, 32)" in message and "over the limit of 8.0 MiB" in message
    assert peak < 1024**2


def test_gzipped_idx_with_more_data_than_declared_is_read_only_up_to_the_declared_size(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as stream:  # declares 10 labels, then 64 MiB more
        stream.write(_idx_header((10,)) + bytes(10))
        for _ in range(16):
            stream.write(bytes(4 * 1024**2))
    peak, message = _peak_bytes(lambda: read_idx(path))
    assert "truncated or oversized IDX data (more than 18 bytes, expected 18" in message
    assert peak < 1024**2


def test_uncompressed_idx_size_is_checked_from_the_file_size(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(_idx_header((2**20, 64, 64)) + bytes(100))
    peak, message = _peak_bytes(lambda: read_idx(path))
    assert "truncated or oversized IDX data" in message and peak < 1024**2


def test_mnist_limit_counts_all_four_files(tmp_path):
    _write_mnist(tmp_path, n_train=40, n_test=20)  # 60 * 16 + 60 values = 8160 bytes
    assert load_mnist(tmp_path, limits=Limits(max_data_bytes=8160)).num_classes == 10
    message = r"t10k-labels.*\(with 7.8 KiB before it\), over the limit of 8.0 KiB"
    with pytest.raises(DatasetError, match=message):
        load_mnist(tmp_path, limits=Limits(max_data_bytes=8159))


def test_cifar10_over_the_limit(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(_cifar_batch(20))
    (tmp_path / "test_batch.bin").write_bytes(_cifar_batch(10))
    with pytest.raises(DatasetError, match="data_batch_1.bin: a CIFAR-10 batch.*over the limit"):
        load_cifar10(tmp_path, limits=Limits(max_data_bytes=100_000))


def test_csv_larger_than_the_limit_is_refused_before_reading(tmp_path):
    path = _write_csv(tmp_path / "big.csv", ["label", "a", "b", "c"], _rows([0, 1] * 500))
    size = path.stat().st_size
    with pytest.raises(DatasetError, match=r"parsing .* of CSV text would take .* over the limit"):
        load_csv(path, limits=Limits(max_data_bytes=8 * size - 1))
    assert load_csv(path, limits=Limits(max_data_bytes=8 * size)).num_classes == 2


def test_a_stray_label_is_a_class_too_small_to_split_not_a_million_classes(tmp_path):
    rows = _rows([0, 1] * 20) + _rows([999999])
    path = _write_csv(tmp_path / "stray.csv", ["label", "a", "b", "c"], rows)
    with pytest.raises(DatasetError, match=r"class '999999' \(1 example\) cannot be split"):
        load_csv(path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "stray.npz", x=rng.normal(size=(41, 3)), y=[0, 1] * 20 + [999999])
    with pytest.raises(DatasetError, match=r"class '999999' \(1 example\)"):
        load_npz(tmp_path / "stray.npz")


def test_more_classes_than_the_limit_are_refused(tmp_path, monkeypatch):
    path = _write_csv(tmp_path / "many.csv", ["label", "a", "b", "c"], _rows(list(range(12)) * 3))
    with pytest.raises(
        DatasetError,
        match=r"12 distinct labels \(classes\), more than the limit "
        r"of 10.*--max-classes",
    ):
        load_csv(path, limits=Limits(max_classes=10))
    assert load_csv(path, limits=Limits(max_classes=12)).num_classes == 12
    monkeypatch.setenv("LABELSMOOTH_MAX_CLASSES", "11")
    with pytest.raises(DatasetError, match="more than the limit of 11"):
        load_dataset(f"csv:{path}")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", x=rng.normal(size=(20, 3)), y=rng.integers(0, 2, (20, 12)))
    with pytest.raises(DatasetError, match="12 label columns, more than the limit of 11"):
        load_npz(tmp_path / "wide.npz")


def test_limits_from_the_environment(tmp_path, monkeypatch):
    path = _write_csv(tmp_path / "d.csv", ["label", "a", "b", "c"], _rows([0, 1] * 20))
    monkeypatch.setenv("LABELSMOOTH_MAX_DATA_BYTES", "1K")
    assert Limits.resolve().max_data_bytes == 1024
    assert Limits.resolve(max_data_bytes=5000).max_data_bytes == 5000  # the setting wins
    with pytest.raises(DatasetError, match="over the limit of 1.0 KiB"):
        load_dataset(f"csv:{path}")
    monkeypatch.setenv("LABELSMOOTH_MAX_DATA_BYTES", "lots")
    with pytest.raises(DatasetError, match="LABELSMOOTH_MAX_DATA_BYTES must be a number of bytes"):
        load_dataset(f"csv:{path}")
    monkeypatch.delenv("LABELSMOOTH_MAX_DATA_BYTES")
    monkeypatch.setenv("LABELSMOOTH_MAX_CLASSES", "1")
    with pytest.raises(DatasetError, match="LABELSMOOTH_MAX_CLASSES must be an integer >= 2"):
        load_dataset(f"csv:{path}")
    monkeypatch.delenv("LABELSMOOTH_MAX_CLASSES")
    assert Limits.resolve() == Limits(2 * 1024**3, 1000)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("512M", 512 * 1024**2),
        ("4G", 4 * 1024**3),
        ("2GiB", 2 * 1024**3),
        ("1.5k", 1536),
        (" 3 MB ", 3 * 1024**2),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1", "0", "4X", "1e9"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="must be"):
        parse_size(text, "--max-data-bytes")


def test_csv_byte_order_mark_before_the_label_column_name(tmp_path):
    path = _write_csv(tmp_path / "bom.csv", ["label", "a", "b", "c"], _rows([0, 1, 2] * 5))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    split = load_csv(path)  # the column "label" is found, not "\ufefflabel"
    assert split.num_classes == 3 and split.num_features == 3
