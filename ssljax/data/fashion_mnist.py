"""Prepare tfds `fashion_mnist` offline from Debian's `dataset-fashion-mnist` files.

The machines we run the small CPU preset on have no network. Debian ships the four
original idx `.gz` files; feeding them to tfds' own `_generate_examples` writes exactly
what `tfds build fashion_mnist` would, so afterwards the plain
`tfds.builder('fashion_mnist', data_dir=...)` loads it.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile

import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist

from ssljax.errors import UserError

DEBIAN_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
SOURCE_FILES = {
    "train_data": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
NUM_TRAIN_EXAMPLES = 60000
NUM_TEST_EXAMPLES = 10000


def debian_files_present(source_dir: str | None = None) -> bool:
    """Whether all four idx files of the Debian package are in `source_dir`."""
    source_dir = source_dir or DEBIAN_SOURCE_DIR
    return all(os.path.isfile(os.path.join(source_dir, f)) for f in SOURCE_FILES.values())


class _LocalFashionMNIST(mnist.FashionMNIST, skip_registration=True):
    """The official builder, reading already-present `.gz` files instead of downloading.

    Same name, version, features and example generator as the registered builder, so
    the files it writes are the official ones. `skip_registration` keeps the
    registered `fashion_mnist` the one `tfds.builder` returns.
    """

    name = "fashion_mnist"
    # No URL is fetched, so no checksums are needed; looking them up would also make
    # tfds 4.9 import `importlib_resources`, which it does not depend on.
    url_infos = None

    def __init__(self, *, source_dir: str, unpacked_dir: str, **kwargs):
        self._source_dir = source_dir
        self._unpacked_dir = unpacked_dir
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded.
        paths = {}
        for key, filename in SOURCE_FILES.items():
            paths[key] = os.path.join(self._unpacked_dir, filename[: -len(".gz")])
            source = os.path.join(self._source_dir, filename)
            with gzip.open(source, "rb") as src, open(paths[key], "wb") as dst:
                shutil.copyfileobj(src, dst)
        return [
            tfds.core.SplitGenerator(
                name=tfds.Split.TRAIN,
                gen_kwargs={
                    "num_examples": NUM_TRAIN_EXAMPLES,
                    "data_path": paths["train_data"],
                    "label_path": paths["train_labels"],
                },
            ),
            tfds.core.SplitGenerator(
                name=tfds.Split.TEST,
                gen_kwargs={
                    "num_examples": NUM_TEST_EXAMPLES,
                    "data_path": paths["test_data"],
                    "label_path": paths["test_labels"],
                },
            ),
        ]


# dataset_info.json records the builder's module; record the official one.
_LocalFashionMNIST.__module__ = mnist.FashionMNIST.__module__


def prepare_fashion_mnist(data_dir: str | None, source_dir: str | None = None) -> str:
    """Write `fashion_mnist/3.0.1` into `data_dir` from the idx files; return its path.

    `source_dir` defaults to Debian's `/usr/share/datasets/fashion-mnist`.
    """
    source_dir = source_dir or DEBIAN_SOURCE_DIR
    if not debian_files_present(source_dir):
        raise UserError(
            f"fashion_mnist is not prepared and its source files are not in {source_dir}. "
            "Install them with `apt-get install dataset-fashion-mnist`, or run "
            "`tfds build fashion_mnist` on a machine with network access."
        )
    with tempfile.TemporaryDirectory(prefix="fashion_mnist_") as unpacked_dir:
        builder = _LocalFashionMNIST(
            data_dir=data_dir, source_dir=source_dir, unpacked_dir=unpacked_dir
        )
        builder.download_and_prepare(
            download_dir=os.path.join(unpacked_dir, "downloads"),
        )
        return str(builder.data_dir)
