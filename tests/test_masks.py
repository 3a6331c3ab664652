"""Tests for ssljax.data.masks and .mask_cache: DetCon's masks, their cache and the batch
contract (DetCon, Hénaff et al. 2021, §3.2; docs/fidelity.md).

Pure mask functions run on tiny hand-made images; the cache, the precompute command and
the pipeline run on Fashion-MNIST prepared once from Debian's package (skipped where it
is absent), with small-image FH parameters.
"""

import contextlib
import io
import os
import subprocess
import sys
from itertools import islice

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from ssljax.data import augment, fashion_mnist, fh, mask_cache, masks, pipeline, registry
from ssljax.errors import UserError

SMALL_FH = fh.FHParams.make((100,), 0.8, 20)  # ~8 segments on a 28-px Fashion-MNIST image
CROP_AND_FLIP_ONLY = augment.crop_and_flip(0.3)


def grid_mask(height: int, width: int, n: int) -> np.ndarray:
    """n×n blocks of (nearly) equal size, ids row-major 0..n²−1 (§3.2 spatial heuristic)."""
    rows = np.arange(height) * n // height
    cols = np.arange(width) * n // width
    return (rows[:, None] * n + cols[None, :]).astype(np.int32)


def global_mask(height: int, width: int) -> np.ndarray:
    """One segment over the whole image: DetCon with it is SimCLR / BYOL (§3.1)."""
    return np.zeros((height, width), np.int32)


# ---- Masks through the views -------------------------------------------------------


def _painted(size=48, n=4):
    """An image whose n×n grid segments are painted in far-apart colours, and its mask."""
    mask = grid_mask(size, size, n)
    palette = np.random.default_rng(0).permutation(256)[: n * n]
    colours = np.stack([palette, 255 - palette, (palette * 7) % 256], axis=-1)
    return colours[mask].astype(np.uint8), mask, colours


def test_a_mask_painted_onto_an_image_stays_on_the_same_pixels_through_crop_flip_resize():
    image, mask, colours = _painted()
    flips = 0
    for i in range(24):
        seed = tf.constant([i, 3], tf.int64)
        view, (mask_view,), decisions = augment.augment_view(
            tf.constant(image),
            seed,
            CROP_AND_FLIP_ONLY,
            0,
            20,
            extra=[tf.constant(mask[..., None])],
            return_decisions=True,
        )
        flips += int(decisions["flip"])
        mask_view = mask_view.numpy()[..., 0]
        assert mask_view.dtype == np.int32
        # Away from segment borders (where bicubic blends colours) every pixel has the
        # colour of the segment the mask view assigns to it.
        padded = np.pad(mask_view, 1, mode="edge")
        neighbours = [
            padded[1 + dy : 21 + dy, 1 + dx : 21 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
        ]
        interior = np.all([nb == mask_view for nb in neighbours], axis=0)
        expected = colours[mask_view][interior] / 255.0
        np.testing.assert_allclose(view.numpy()[interior], expected, atol=2 / 255)
        assert interior.mean() > 0.3
    assert 0 < flips < 24  # both flipped and unflipped views were checked


def test_views_with_masks_leaves_the_views_of_two_views_unchanged():
    image, mask, _ = _painted()
    seed = tf.constant([5, 9], tf.int64)
    out = masks.views_with_masks(
        tf.constant(image), tf.constant(mask[..., None]), seed, "byol", 16, 4, 16
    )
    view1, view2 = augment.two_views(tf.constant(image), seed, "byol", 16)
    np.testing.assert_array_equal(out["view1"], view1)
    np.testing.assert_array_equal(out["view2"], view2)
    assert out["mask1"].shape == (4, 4) and out["ids1"].shape == (16,)


def test_majority_pool_gives_each_cell_its_majority_segment_on_a_hand_made_mask():
    mask = np.zeros((4, 4), np.int32)
    mask[:2, :2] = [[7, 7], [7, 3]]  # cell (0, 0): 7 owns 3 of 4 pixels
    mask[:2, 2:] = [[9, 2], [9, 2]]  # cell (0, 1): a tie between 2 and 9 → the smaller id
    mask[2:, :2] = 300  # cell (1, 0): one segment above 255
    mask[2:, 2:] = [[5, 5], [1, 6]]  # cell (1, 1): 5 has a plurality
    pooled = masks.majority_pool(tf.constant(mask), 2).numpy()
    np.testing.assert_array_equal(pooled, [[7, 2], [300, 5]])
    assert pooled.dtype == np.int32


@pytest.mark.parametrize("size, grid", [(16, 4), (28, 4), (10, 7)])
def test_majority_pool_equals_average_pooling_binary_masks_then_argmax(size, grid):
    rng = np.random.default_rng(size)
    mask = rng.choice([0, 4, 11, 1000], size=(size, size), p=[0.4, 0.3, 0.2, 0.1])
    pooled = masks.majority_pool(tf.constant(mask, tf.int32), grid).numpy()
    ids = np.unique(mask)
    cell = np.arange(size) * grid // size  # the documented pixel → cell rule
    onehot = (mask[..., None] == ids).astype(float)
    average = np.zeros((grid, grid, len(ids)))
    np.add.at(average, (cell[:, None], cell[None, :]), onehot)
    np.testing.assert_array_equal(pooled, ids[np.argmax(average, axis=-1)])


def test_shared_sampling_draws_one_set_among_ids_both_views_show():
    mask1 = tf.constant([[1, 1], [4, 700]], tf.int32)
    mask2 = tf.constant([[4, 4], [700, 9]], tf.int32)  # shares 4 and 700 with view 1
    counts = np.zeros(2)
    for i in range(200):
        seed = tf.constant([i, 0], tf.int64)
        ids1, ids2 = masks.sample_ids(mask1, mask2, seed, 16, "shared")
        ids1, ids2 = ids1.numpy(), ids2.numpy()
        assert ids1.dtype == np.int32 and ids1.shape == (16,)
        np.testing.assert_array_equal(ids1, ids2)
        assert set(ids1) <= {4, 700}
        counts += [np.sum(ids1 == 4), np.sum(ids1 == 700)]
    # 3200 fair draws between two ids: within 5 σ of 1600 each.
    assert abs(counts[0] - 1600) < 5 * np.sqrt(3200 * 0.25)

    disjoint = tf.constant([[8, 8], [8, 2]], tf.int32)
    ids1, ids2 = masks.sample_ids(mask1, disjoint, tf.constant([1, 2], tf.int64), 16, "shared")
    assert set(ids1.numpy()) == {1, 4, 700} and set(ids2.numpy()) == {2, 8}  # with replacement


def test_independent_sampling_draws_each_view_with_its_own_seed_among_its_own_ids():
    """The DetCon reference's default: a fresh rng key per view, every id present in that
    view; so ids seen in one view only are drawn and the two draws differ."""
    mask1 = tf.constant([[1, 1], [4, 700]], tf.int32)  # ids 1, 4, 700
    mask2 = tf.constant([[4, 4], [700, 9]], tf.int32)  # ids 4, 700, 9
    counts1, counts2, equal = np.zeros(3), np.zeros(3), 0
    for i in range(200):
        ids1, ids2 = masks.sample_ids(mask1, mask2, tf.constant([i, 0], tf.int64), 16)
        ids1, ids2 = ids1.numpy(), ids2.numpy()
        assert ids1.dtype == np.int32 and ids1.shape == (16,)
        counts1 += [np.sum(ids1 == k) for k in (1, 4, 700)]
        counts2 += [np.sum(ids2 == k) for k in (4, 700, 9)]
        equal += np.array_equal(ids1, ids2)
    assert counts1.sum() == counts2.sum() == 3200  # nothing outside each view's own ids
    # 3200 fair draws among three ids: each within 5 σ of 3200/3.
    sigma = np.sqrt(3200 * (1 / 3) * (2 / 3))
    assert np.all(np.abs(counts1 - 3200 / 3) < 5 * sigma)
    assert np.all(np.abs(counts2 - 3200 / 3) < 5 * sigma)
    assert equal == 0

    # Same mask in both views: still two different draws (different keys per view).
    ids1, ids2 = masks.sample_ids(mask1, mask1, tf.constant([3, 4], tf.int64), 16)
    assert not np.array_equal(ids1.numpy(), ids2.numpy())

    seed = tf.constant([7, 7], tf.int64)
    again = [masks.sample_ids(mask1, mask2, seed, 16) for _ in range(2)]
    np.testing.assert_array_equal(again[0][0], again[1][0])
    np.testing.assert_array_equal(again[0][1], again[1][1])
    other = masks.sample_ids(mask1, mask2, tf.constant([7, 8], tf.int64), 16)
    assert not np.array_equal(again[0][0], other[0])


def test_an_unknown_sampling_is_a_user_error():
    mask = tf.constant([[1, 1], [4, 700]], tf.int32)
    with pytest.raises(UserError, match="masks.sampling"):
        masks.sample_ids(mask, mask, tf.constant([1, 2], tf.int64), 16, "both")


def test_the_pipeline_samples_as_masks_sampling_says():
    image, mask, _ = _painted(size=32, n=4)
    args = (tf.constant(image), tf.constant(mask[..., None]), tf.constant([1, 1], tf.int64))
    shared = masks.views_with_masks(*args, "byol", 16, 4, 16, "shared")
    independent = masks.views_with_masks(*args, "byol", 16, 4, 16)
    both = set(shared["mask1"].numpy().ravel()) & set(shared["mask2"].numpy().ravel())
    assert set(shared["ids1"].numpy()) <= both
    np.testing.assert_array_equal(shared["ids1"], shared["ids2"])
    assert not np.array_equal(independent["ids1"], independent["ids2"])
    assert set(independent["ids2"].numpy()) <= set(independent["mask2"].numpy().ravel())


def test_segment_ids_above_255_and_65535_survive_views_pooling_and_sampling():
    image, mask, _ = _painted(size=32, n=4)
    big = (mask + 70_000).astype(np.int32)[..., None]
    out = masks.views_with_masks(
        tf.constant(image), tf.constant(big), tf.constant([1, 1], tf.int64), "byol", 16, 4, 16
    )
    for key in ("mask1", "mask2", "ids1", "ids2"):
        assert out[key].dtype == tf.int32
        assert set(out[key].numpy().ravel()) <= set(range(70_000, 70_016))


# ---- Masks of one image -------------------------------------------------------------


def test_felzenszwalb_mask_is_int32_with_paper_defaults_and_reacts_to_its_parameters():
    image, _, _ = _painted(size=64, n=2)
    segments = fh.felzenszwalb_mask(image, scale=100, sigma=0.8, min_size=300)
    assert segments.dtype == np.int32 and segments.shape == (64, 64)
    quadrants = [segments[:32, :32], segments[:32, 32:], segments[32:, :32], segments[32:, 32:]]
    assert len({int(np.median(q)) for q in quadrants}) == 4  # the four painted quadrants
    assert len(np.unique(segments)) == 4
    gray = fh.felzenszwalb_mask(image[..., :1], scale=100, min_size=300)
    assert gray.shape == (64, 64)
    # The paper's ImageNet parameters make one segment of a small 28-px image.
    tiny = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    assert np.unique(fh.felzenszwalb_mask(tiny)).tolist() == [0]
    both = fh.fh_masks(image, fh.FHParams.make((100, 100000), 0.8, 20))
    assert both.shape == (64, 64, 2) and len(np.unique(both[..., 1])) < 4


def test_fh_params_key_names_every_parameter_and_min_size_zero_means_the_scale():
    assert fh.FHParams().key == "fh_s1000_sig0.8_min1000"
    coco = fh.FHParams.make((500, 1000, 1500), 0.8, 0)
    assert coco.min_sizes == (500, 1000, 1500)
    assert coco.key == "fh_s500-1000-1500_sig0.8_min500-1000-1500"
    keys = {
        fh.FHParams.make(1000, 0.8, 1000).key,
        fh.FHParams.make(1000, 0.5, 1000).key,
        fh.FHParams.make(1000, 0.8, 500).key,
        fh.FHParams.make(900, 0.8, 1000).key,
    }
    assert len(keys) == 4
    with pytest.raises(UserError, match="one min_size per scale"):
        fh.FHParams.make((500, 1000), 0.8, (500,))


def test_grid_and_global_masks():
    np.testing.assert_array_equal(
        grid_mask(3, 5, 2), [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [2, 2, 2, 3, 3]]
    )
    assert grid_mask(9, 9, 3).max() == 8 and grid_mask(9, 9, 3).dtype == np.int32
    assert global_mask(4, 6).shape == (4, 6) and not global_mask(4, 6).any()


# ---- Cache ---------------------------------------------------------------------------


class _Split:
    def __init__(self, num_examples, shard_lengths):
        self.num_examples, self.shard_lengths = num_examples, shard_lengths


def test_fh_cache_round_trips_int32_masks_and_keys_on_its_parameters(tmp_path):
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 2**31 - 1, (h, w, 2), dtype=np.int32) for h, w in [(3, 5), (7, 2)]]
    maps += [grid_mask(40, 30, 20)[..., None] + 100_000]
    for m in maps:
        decoded = mask_cache.decode_mask(mask_cache.encode_mask(m))
        assert decoded.dtype == np.int32
        np.testing.assert_array_equal(decoded, m)

    cache = mask_cache.MaskCache(str(tmp_path), "toy", "train", SMALL_FH)
    cache.create(_Split(3, [2, 1]), chunk_size=2)
    assert cache.missing(0, 3) == [0, 1]
    cache.write_chunk(0, [mask_cache.encode_mask(m) for m in maps[:2]])
    cache.write_chunk(1, [mask_cache.encode_mask(maps[2])])
    assert cache.missing(0, 3) == []
    reopened = mask_cache.MaskCache(str(tmp_path), "toy", "train", SMALL_FH)
    np.testing.assert_array_equal(reopened.read(2), maps[2])
    np.testing.assert_array_equal(reopened.read_in_shard(1, 0), maps[2])  # file 1, first
    np.testing.assert_array_equal(reopened.read_in_shard(0, 1), maps[1])
    assert reopened.directory == os.path.join(str(tmp_path), "toy", "train", SMALL_FH.key)

    other = fh.FHParams.make((100,), 0.8, 21)
    assert mask_cache.MaskCache(str(tmp_path), "toy", "train", other).meta is None
    with pytest.raises(UserError, match="another version"):
        reopened.create(_Split(3, [1, 2]), chunk_size=2)


def test_tfds_ids_locate_their_file_and_index():
    assert mask_cache.parse_tfds_id(b"fashion_mnist-train.tfrecord-00000-of-00001__63") == (
        "train",
        0,
        63,
    )
    assert mask_cache.parse_tfds_id("imagenet2012-train.array_record-01023-of-01024__7") == (
        "train",
        1023,
        7,
    )


# ---- Precompute command and pipeline on Fashion-MNIST ---------------------------------


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    if not fashion_mnist.debian_files_present():
        pytest.skip("needs Debian's dataset-fashion-mnist package")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    with contextlib.redirect_stdout(io.StringIO()):
        registry.get_dataset("fashion_mnist", data_dir)
    return data_dir


def _precompute_cli(data_dir, cache_dir, split, workers):
    command = [sys.executable, "-m", "ssljax.data.masks", "--dataset=fashion_mnist"]
    command += [f"--split={split}", f"--data_dir={data_dir}", f"--cache_dir={cache_dir}"]
    command += ["--scale=100", "--min_size=20", "--chunk_size=32", f"--workers={workers}"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_precompute_command_fills_the_cache_and_resumes_after_an_interruption(
    fashion_dir, tmp_path
):
    cache_dir = str(tmp_path / "masks")
    printed = _precompute_cli(fashion_dir, cache_dir, "train[:64]", workers=2)
    assert "64 images to compute, 0 chunk(s) already done, 2 worker(s)" in printed
    assert "Done: 64 images" in printed and "images/s" in printed
    cache = mask_cache.MaskCache(cache_dir, "fashion_mnist", "train", SMALL_FH)
    first = [cache.read(i) for i in range(64)]

    # An interrupted run leaves a half-written chunk (.tmp) and no later chunk files.
    os.remove(cache.chunk_path(1))
    with open(cache.chunk_path(1) + ".tmp", "wb") as f:
        f.write(b"partial")
    lines = []

    def rerun():
        lines.clear()
        return mask_cache.precompute(
            "fashion_mnist",
            "train[:64]",
            SMALL_FH,
            data_dir=fashion_dir,
            cache_dir=cache_dir,
            workers=1,
            log=lines.append,
        )

    assert rerun()["images"] == 32
    assert "32 images to compute, 1 chunk(s) already done" in lines[0]
    again = mask_cache.MaskCache(cache_dir, "fashion_mnist", "train", SMALL_FH)
    for i in range(64):
        np.testing.assert_array_equal(again.read(i), first[i])
    assert not os.path.exists(cache.chunk_path(1) + ".tmp")
    assert again.meta["chunk_size"] == 32  # the first run's, not this run's default
    assert rerun()["images"] == 0 and "2 chunk(s) already done" in lines[0]


def test_fh_worker_processes_do_not_import_tensorflow():
    code = "import sys, ssljax.data.mask_cache; print('tensorflow' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert done.stdout.strip() == "False", done.stderr


def _config(data_dir, kind="fh", **masks_fields):
    return ml_collections.ConfigDict(
        {
            "seed": 0,
            "batch_size": 16,
            "dataset": {
                "name": "fashion_mnist",
                "data_dir": data_dir,
                "train_split": "train[:64]",
                "image_size": 32,
                "shuffle_buffer": 64,
                "threads": 2,
            },
            "augment": {"preset": "byol"},
            "masks": {
                "kind": kind,
                "fh_scales": (100,),
                "fh_sigma": 0.8,
                "fh_min_size": 20,
                "grid_size": 4,
                "grid": 4,
                "num_samples": 16,
                "compute_in_pipeline": True,
                "cache_dir": None,
                **masks_fields,
            },
        }
    )


def _batches(config, n, start_step=0):
    stream = pipeline.train_batches(config, start_step=start_step, process_index=0, process_count=1)
    return list(islice(stream, n))


def test_train_batches_with_fh_masks_follow_the_contract_and_resume_exactly(fashion_dir):
    config = _config(fashion_dir)
    full = _batches(config, 6)  # 4 steps per epoch
    plain = _config(fashion_dir, kind="none")
    for batch, unmasked in zip(full[:1], _batches(plain, 1), strict=True):
        assert set(batch) == {"view1", "view2", "label", "mask1", "mask2", "ids1", "ids2"}
        for key in ("view1", "view2", "label"):  # masks change nothing else
            np.testing.assert_array_equal(batch[key], unmasked[key])
    for batch in full:
        for view in (1, 2):
            mask, ids = batch[f"mask{view}"], batch[f"ids{view}"]
            assert mask.shape == (16, 4, 4) and mask.dtype == np.int32
            assert ids.shape == (16, 16) and ids.dtype == np.int32
            for m, i in zip(mask, ids, strict=True):
                assert set(i) <= set(m.ravel())
        assert np.mean([len(np.unique(m)) for m in batch["mask1"]]) > 2  # real segments
        # How the two views' ids relate is `masks.sampling`'s (test_the_pipeline_samples_...).
    for start in (2, 5):
        for a, b in zip(full[start:], _batches(config, 6 - start, start), strict=False):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("kind", ["grid", "global"])
def test_grid_and_global_masks_in_the_pipeline(fashion_dir, kind):
    batch = _batches(_config(fashion_dir, kind=kind), 1)[0]
    if kind == "global":
        assert not batch["mask1"].any() and not batch["ids1"].any() and not batch["ids2"].any()
    else:
        assert batch["mask1"].max() < 16 and len(np.unique(batch["mask1"])) > 4


def test_cached_masks_equal_masks_computed_in_the_pipeline(fashion_dir, tmp_path):
    config = _config(fashion_dir, compute_in_pipeline=False, cache_dir=str(tmp_path))
    with pytest.raises(UserError) as error:
        next(pipeline.train_batches(config, process_index=0, process_count=1))
    command = (
        f"python -m ssljax.data.masks --dataset=fashion_mnist --split='train[:64]' "
        f"--data_dir={fashion_dir} --cache_dir={tmp_path} --scale=100 --sigma=0.8 --min_size=20"
    )
    assert command in str(error.value)

    mask_cache.precompute(
        "fashion_mnist",
        "train[:40]",
        SMALL_FH,
        data_dir=fashion_dir,
        cache_dir=str(tmp_path),
        workers=1,
        chunk_size=32,
        log=lambda line: None,
    )
    cached = _batches(config, 5)
    computed = _batches(_config(fashion_dir), 5)
    for a, b in zip(cached, computed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_panoptic_pixels_become_int32_ids_that_do_not_wrap():
    rgb = np.array([[[0, 0, 0], [1, 0, 0]], [[0, 1, 0], [7, 2, 1]]], np.uint8)
    ids = masks.panoptic_segment_ids(tf.constant(rgb)).numpy()
    assert ids.dtype == np.int32 and ids.shape == (2, 2, 1)
    assert ids[..., 0].tolist() == [[0, 1], [256, 7 + 2 * 256 + 65536]]


def test_a_ground_truth_mask_of_another_size_is_resized_by_nearest_neighbour():
    mask = tf.constant([[1, 2], [3, 4]], tf.int32)[..., None]
    same = masks.resize_nearest(mask, tf.constant([2, 2]))
    np.testing.assert_array_equal(same, mask)
    big = masks.resize_nearest(mask, tf.constant([4, 6])).numpy()[..., 0]
    assert big.dtype == np.int32 and big.shape == (4, 6)
    assert big[:2, :3].tolist() == [[1] * 3] * 2 and big[2:, 3:].tolist() == [[4] * 3] * 2


def test_unknown_mask_kind_and_ground_truth_are_user_errors(fashion_dir):
    with pytest.raises(UserError, match="none, fh, grid, global, ground_truth"):
        next(
            pipeline.train_batches(
                _config(fashion_dir, kind="mcg"), process_index=0, process_count=1
            )
        )
    with pytest.raises(UserError, match="'fashion_mnist' has none.*coco_panoptic"):
        next(
            pipeline.train_batches(
                _config(fashion_dir, kind="ground_truth"), process_index=0, process_count=1
            )
        )


def test_several_fh_scales_give_one_mask_per_image_drawn_from_its_seed():
    stacked = tf.stack([tf.zeros([4, 4], tf.int32), tf.ones([4, 4], tf.int32)], axis=-1)
    picks = [
        int(masks.pick_scale(stacked, tf.constant([i, 0], tf.int64))[0, 0, 0]) for i in range(200)
    ]
    assert 60 < sum(picks) < 140  # both scales are used, about equally
    assert masks.pick_scale(stacked, tf.constant([3, 0], tf.int64)).shape == (4, 4, 1)
