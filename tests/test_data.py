"""Tests for ssljax.data.registry, .fashion_mnist and .pipeline.

ImageNet, CIFAR-10 and STL-10 run through their real tfds builders with
`tfds.testing.mock_data` (random examples, our own split metadata). Resume and process
sharding need real files, so they use Fashion-MNIST prepared from Debian's package
once per session (skipped where the package is absent).
"""

import contextlib
import functools
import io
import json
from itertools import islice

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ssljax.data import augment, fashion_mnist, pipeline, registry
from ssljax.errors import UserError

MOCK_EXAMPLES = 24
MOCK_SPLITS = {
    "imagenet2012": {"train": MOCK_EXAMPLES, "validation": MOCK_EXAMPLES},
    "cifar10": {"train": MOCK_EXAMPLES, "test": MOCK_EXAMPLES},
    # mock_data serves MOCK_EXAMPLES for any split, so the parts of "unlabelled+train" add up.
    "stl10": {"unlabelled": MOCK_EXAMPLES // 2, "train": MOCK_EXAMPLES // 2, "test": MOCK_EXAMPLES},
    "coco/2017": {"train": MOCK_EXAMPLES, "validation": MOCK_EXAMPLES},
    "coco/2017_panoptic": {"train": MOCK_EXAMPLES, "validation": MOCK_EXAMPLES},
}


def _config(name, data_dir, **dataset):
    return ml_collections.ConfigDict(
        {
            "seed": 0,
            "batch_size": 16,
            "dataset": {
                "name": name,
                "data_dir": data_dir,
                "image_size": 16,
                "shuffle_buffer": 64,
                "threads": 2,
                **dataset,
            },
            "augment": {"preset": "byol"},
        }
    )


def _single(**kwargs):
    return {"process_index": 0, "process_count": 1, **kwargs}


@contextlib.contextmanager
def _mocked(name, data_dir):
    """`mock_data` over the real builder, with split metadata written to `data_dir`."""
    builder = tfds.builder(name, data_dir=str(data_dir))
    splits = [
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0)
        for s, n in MOCK_SPLITS[name].items()
    ]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(MOCK_EXAMPLES, data_dir=str(data_dir), policy=policy):
        yield


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory):
    """A data_dir where `get_dataset` prepared fashion_mnist itself; and what it printed."""
    if not fashion_mnist.debian_files_present():
        pytest.skip("needs Debian's dataset-fashion-mnist package")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        registry.get_dataset("fashion_mnist", data_dir)
    return data_dir, printed.getvalue()


@pytest.mark.parametrize(
    "name, eval_split", [("imagenet2012", "validation"), ("cifar10", "test"), ("stl10", "test")]
)
def test_mocked_real_builders_give_well_formed_train_and_eval_batches(name, eval_split, tmp_path):
    with _mocked(name, tmp_path):
        info, _ = registry.get_dataset(name, str(tmp_path))
        assert info.num_train_examples == MOCK_EXAMPLES and info.num_classes == 10 ** (
            3 if name == "imagenet2012" else 1
        )
        config = _config(name, str(tmp_path), image_size=32)
        config.batch_size = 8
        batches = list(islice(pipeline.train_batches(config, **_single()), 4))  # 3 per epoch
        for batch in batches:
            assert set(batch) == {"view1", "view2", "label"}
            for view in (batch["view1"], batch["view2"]):
                assert view.shape == (8, 32, 32, 3) and view.dtype == np.float32
                assert 0.0 <= view.min() and view.max() <= 1.0 and view.std() > 0.01
            assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
            assert (0 <= batch["label"]).all() and (batch["label"] < info.num_classes).all()
        assert not np.array_equal(batches[0]["view1"], batches[0]["view2"])

        evals = list(pipeline.eval_batches(config, eval_split, 10, **_single()))
        assert [len(b["mask"]) for b in evals] == [10, 10, 10]
        assert [int(b["mask"].sum()) for b in evals] == [10, 10, 4]
        for batch in evals:
            assert batch["image"].shape == (10, 32, 32, 3) and batch["image"].dtype == np.float32
            assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
            assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool


def _mask_config(name, data_dir, kind):
    config = _config(name, data_dir, image_size=32)
    config.batch_size = 8
    config.masks = ml_collections.ConfigDict(
        {
            "kind": kind,
            "fh_scales": (100,),
            "fh_sigma": 0.8,
            "fh_min_size": 5,
            "grid": 4,
            "num_samples": 16,
            "compute_in_pipeline": True,
        }
    )
    return config


@pytest.mark.parametrize(
    "name, tfds_name, kind",
    [("coco", "coco/2017", "fh"), ("coco_panoptic", "coco/2017_panoptic", "ground_truth")],
)
def test_mocked_coco_gives_unlabelled_views_with_masks(
    name, tfds_name, kind, tmp_path, monkeypatch
):
    # mock_data draws each field of a Sequence (COCO's objects) with its own random length,
    # which its own encoder then rejects; fixed dynamic sizes (10) keep them consistent
    # and make the panoptic PNG the image's size, as in the real data.
    from tensorflow_datasets.testing import mocking

    fixed = functools.partial(mocking.EncodedRandomFakeGenerator, constant_dynamic_shape=True)
    monkeypatch.setattr(mocking, "EncodedRandomFakeGenerator", fixed)
    with _mocked(tfds_name, tmp_path):
        info, _ = registry.get_dataset(name, str(tmp_path))
        assert info.num_train_examples == MOCK_EXAMPLES and info.num_classes is None
        config = _mask_config(name, str(tmp_path), kind)
        for batch in islice(pipeline.train_batches(config, **_single()), 4):
            assert set(batch) == {"view1", "view2", "mask1", "mask2", "ids1", "ids2"}
            assert batch["view1"].shape == (8, 32, 32, 3)
            for view in (1, 2):
                mask, ids = batch[f"mask{view}"], batch[f"ids{view}"]
                assert mask.shape == (8, 4, 4) and ids.shape == (8, 16)
                for m, i in zip(mask, ids, strict=True):
                    assert set(i) <= set(m.ravel())
        if kind == "ground_truth":
            # Random panoptic pixels: ids R + 256·G + 256²·B, far above a uint8's range.
            assert batch["mask1"].max() > 255


def test_unknown_dataset_is_a_user_error_listing_the_names():
    with pytest.raises(UserError, match="cifar10.*fashion_mnist.*imagenet2012.*stl10"):
        registry.get_dataset("mnist", "/nonexistent")


@pytest.mark.parametrize(
    "name, advice",
    [
        ("imagenet2012", "downloads/manual.*tfds build imagenet2012 --data_dir="),
        ("cifar10", "tfds build cifar10 --data_dir="),
        ("stl10", "tfds build stl10 --data_dir="),
    ],
)
def test_unprepared_dataset_error_says_how_to_prepare_it(name, advice, tmp_path):
    with pytest.raises(UserError, match=f"not prepared in {tmp_path}.*{advice}"):
        registry.get_dataset(name, str(tmp_path))


def test_fashion_mnist_without_debian_files_error_says_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_SOURCE_DIR", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        registry.get_dataset("fashion_mnist", str(tmp_path))


def test_fashion_mnist_is_prepared_from_debian_files_in_the_official_format(fashion_dir):
    data_dir, printed = fashion_dir
    assert "Preparing fashion_mnist" in printed
    builder = tfds.builder("fashion_mnist", data_dir=data_dir)  # the plain, registered one
    assert builder.is_prepared() and str(builder.version) == "3.0.1"
    assert builder.info.splits["train"].num_examples == 60000
    assert builder.info.splits["test"].num_examples == 10000
    stored = json.loads((builder.data_path / "dataset_info.json").read_text())
    assert stored["moduleName"] == "tensorflow_datasets.image_classification.mnist"
    for split, per_class in (("train", 6000), ("test", 1000)):
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        labels = np.concatenate(
            list(ds.map(lambda ex: ex["label"]).batch(10000).as_numpy_iterator())
        )
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)
    image = next(iter(builder.as_dataset(split="test")))["image"]
    assert image.shape == (28, 28, 1) and image.dtype == tf.uint8


def test_resumed_stream_equals_the_uninterrupted_one_and_depends_on_the_seed(fashion_dir):
    config = _config("fashion_mnist", fashion_dir[0], train_split="train[:96]")  # 6 steps/epoch
    full = list(islice(pipeline.train_batches(config, **_single()), 15))
    for start in (4, 6, 11):
        resumed = list(islice(pipeline.train_batches(config, start_step=start, **_single()), 3))
        for a, b in zip(full[start : start + 3], resumed, strict=True):
            for key in ("view1", "view2", "label"):
                np.testing.assert_array_equal(a[key], b[key])
    labels = [np.concatenate([b["label"] for b in full[e * 6 : e * 6 + 6]]) for e in (0, 1)]
    assert not np.array_equal(labels[0], labels[1])  # each epoch has its own order...
    np.testing.assert_array_equal(np.sort(labels[0]), np.sort(labels[1]))  # ...of the same images

    config.seed = 1
    other_seed = next(pipeline.train_batches(config, **_single()))
    assert not np.array_equal(full[0]["view1"], other_seed["view1"])


def _unaugmented(image, seed, preset, out_size):
    view = tf.image.resize(tf.cast(image, tf.float32), [out_size, out_size]) / 255.0
    return view, view


def _key(image):
    """An image's identity, robust to float rounding and to gray → RGB tiling."""
    return np.round(image[..., 0] * 255).astype(np.uint8).tobytes()


def test_two_processes_read_disjoint_halves_of_the_split(fashion_dir, monkeypatch):
    monkeypatch.setattr(augment, "two_views", _unaugmented)  # views identify the images
    config = _config("fashion_mnist", fashion_dir[0], train_split="train[:96]", image_size=28)
    seen = []
    for index in (0, 1):
        stream = pipeline.train_batches(config, process_index=index, process_count=2)
        batches = list(islice(stream, 6))  # one epoch: 6 steps of 16 / 2 images
        assert all(b["view1"].shape == (8, 28, 28, 1) for b in batches)
        seen.append({_key(v) for b in batches for v in b["view1"]})
    assert len(seen[0]) == len(seen[1]) == 48 and not seen[0] & seen[1]
    everything = pipeline.eval_batches(config, "train[:96]", 96, **_single())
    assert seen[0] | seen[1] == {_key(v) for b in everything for v in b["image"]}


def test_eval_batches_are_padded_with_masked_rows_and_split_over_processes(fashion_dir):
    config = _config("fashion_mnist", fashion_dir[0])
    batches = list(pipeline.eval_batches(config, "test[:50]", 16, **_single()))
    assert [int(b["mask"].sum()) for b in batches] == [16, 16, 16, 2]
    assert all(b["image"].shape == (16, 16, 16, 3) for b in batches)
    last = batches[-1]
    assert (last["image"][2:] == 0).all() and (last["label"][2:] == -1).all()
    again = list(pipeline.eval_batches(config, "test[:50]", 16, **_single()))
    np.testing.assert_array_equal(batches[0]["image"], again[0]["image"])

    images = {_key(v) for b in batches for v, m in zip(b["image"], b["mask"]) if m}
    halves = []
    for index in (0, 1):
        part = list(
            pipeline.eval_batches(config, "test[:50]", 16, process_index=index, process_count=2)
        )
        assert [int(b["mask"].sum()) for b in part] == [16, 9]
        halves.append({_key(v) for b in part for v, m in zip(b["image"], b["mask"]) if m})
    assert not halves[0] & halves[1] and halves[0] | halves[1] == images


def test_bad_batch_size_split_and_preset_are_user_errors(fashion_dir):
    config = _config("fashion_mnist", fashion_dir[0], train_split="train[:96]")
    config.batch_size = 15
    with pytest.raises(UserError, match="multiple of the 2 processes"):
        next(pipeline.train_batches(config, process_index=0, process_count=2))
    config.batch_size = 128
    with pytest.raises(UserError, match="fewer images than one batch"):
        next(pipeline.train_batches(config, **_single()))
    config.batch_size = 16
    config.dataset.train_split = "training"
    with pytest.raises(UserError, match="'training' is not valid"):
        next(pipeline.train_batches(config, **_single()))
    config.dataset.train_split = "train[:96]"
    config.augment.preset = "byol2"
    with pytest.raises(UserError, match="preset"):
        next(pipeline.train_batches(config, **_single()))


def test_steps_per_epoch_drops_the_last_partial_batch():
    config = ml_collections.ConfigDict({"batch_size": 32})
    assert pipeline.steps_per_epoch(config, 1024) == 32
    assert pipeline.steps_per_epoch(config, 1055) == 32
    assert pipeline.steps_per_epoch(config, 31) == 0
