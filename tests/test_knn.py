import numpy as np
import pytest

from ssljax.eval import knn

# A query at angle 0 and four memory images: one of class 0 right on it (cosine 1), two of
# class 1 at ±53° (cosine 0.6) and one of class 2 opposite (cosine -1).
MEMORY = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]], np.float32)
MEMORY_LABELS = np.array([0, 1, 1, 2])
QUERY = np.array([[1.0, 0.0]], np.float32)


def test_nearest_neighbour_is_the_closest_memory_image():
    assert knn.knn_predict(
        MEMORY, MEMORY_LABELS, QUERY, k=1, temperature=0.07, num_classes=3
    ).tolist() == [0]


def test_votes_are_weighted_by_exp_similarity_over_temperature():
    # 3-NN: class 0 weighs e^(1/T), class 1 weighs 2·e^(0.6/T). At T = 0.07 one close
    # neighbour outvotes two far ones; at T = 10 the votes are nearly equal and 2 beat 1.
    sharp = knn.knn_predict(MEMORY, MEMORY_LABELS, QUERY, k=3, temperature=0.07, num_classes=3)
    flat = knn.knn_predict(MEMORY, MEMORY_LABELS, QUERY, k=3, temperature=10.0, num_classes=3)
    assert (sharp.tolist(), flat.tolist()) == ([0], [1])


def test_similarity_is_cosine_and_chunking_changes_nothing():
    rng = np.random.default_rng(0)
    memory = rng.standard_normal((200, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 200)
    queries = rng.standard_normal((50, 8)).astype(np.float32)
    expected = knn.knn_predict(memory, labels, queries, 20, 0.07, 5)
    scaled = knn.knn_predict(
        memory * rng.uniform(0.1, 10, (200, 1)), labels, 3 * queries, 20, 0.07, 5, chunk=7
    )
    np.testing.assert_array_equal(expected, scaled)


def test_knn_of_separated_clusters_is_exact_and_k_above_the_memory_size_is_clipped():
    rng = np.random.default_rng(1)
    centres = np.eye(4, 16) * 10
    labels = np.repeat(np.arange(4), 30)
    memory = centres[labels] + rng.standard_normal((120, 16))
    queries = centres[labels] + rng.standard_normal((120, 16))
    for k in (20, 200):  # 200 > 120 memory images: all of them vote
        pred = knn.knn_predict(memory, labels, queries, k, 0.07, 4)
        assert np.mean(pred == labels) == pytest.approx(1.0)
