"""Metrics against scikit-learn, pycocotools and hand-computed values."""

from __future__ import annotations

import math

import pytest

from kiln.algorithms import metrics as M

np = pytest.importorskip("numpy")


def test_classification_macro_averages_and_confusion_matrix() -> None:
    y = ["cat", "cat", "dog", "dog", "dog", "bird"]
    p = ["cat", "dog", "dog", "dog", "cat", "cat"]
    m, art = M.classification(y, p, ["bird", "cat", "dog"])
    # per class precision: bird 0/0 -> 0, cat 1/3, dog 2/3; recall: bird 0, cat 1/2, dog 2/3
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx((0 + 1 / 3 + 2 / 3) / 3)
    assert m["recall"] == pytest.approx((0 + 1 / 2 + 2 / 3) / 3)
    f1 = [0.0, 2 * (1 / 3 * 1 / 2) / (1 / 3 + 1 / 2), 2 / 3]
    assert m["f1"] == pytest.approx(sum(f1) / 3)
    assert art["confusion_matrix"] == [[0, 1, 0], [0, 1, 1], [0, 1, 2]]
    assert art["labels"] == ["bird", "cat", "dog"]


def test_classification_equals_sklearn_on_random_labels() -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(3)
    for k in (2, 5, 9):
        y = rng.integers(0, k, 300).tolist()
        p = rng.integers(0, k - 1, 300).tolist()  # one class never predicted: zero_division path
        m, art = M.classification(y, p, list(range(k)))
        pr, rc, f1, _ = precision_recall_fscore_support(y, p, labels=list(range(k)), average="macro", zero_division=0)
        assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((pr, rc, f1))
        assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert art["confusion_matrix"] == confusion_matrix(y, p, labels=list(range(k))).tolist()


def test_regression_metrics() -> None:
    m = M.regression([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 6.0])
    assert m["rmse"] == pytest.approx(1.0)  # sqrt(4 / 4)
    assert m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 4 / 5)


def test_prefixed_names() -> None:
    assert M.prefixed("validation", {"accuracy": 1}) == {"validation_accuracy": 1.0}


def test_clustering_matches_sklearn() -> None:
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.1, (20, 2)), rng.normal(3, 0.1, (20, 2))])
    labels = [0] * 20 + [1] * 20
    m = M.clustering(x, labels)
    assert m["silhouette"] == pytest.approx(silhouette_score(x, labels)) and m["silhouette"] > 0.9
    assert m["davies_bouldin"] < 0.1 and m["n_clusters"] == 2
    assert "silhouette" not in M.clustering(x, [0] * 40)  # undefined for one cluster


def test_segmentation_by_hand() -> None:
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 2], [2, 0, 0, 1]])
    m, art = M.segmentation([pred], [label], num_labels=4, ignore_index=255)
    # class 0: inter 3, pred 4 (3 + one on a label-2 pixel), label 4 -> union 5
    # class 1: inter 3, pred 4 (the two on ignored pixels dropped), label 4 -> union 5
    # class 2: inter 1, pred 2, label 2 -> union 3; class 3 absent -> NaN
    assert art["per_category_iou"][:3] == pytest.approx([3 / 5, 3 / 5, 1 / 3])
    assert math.isnan(art["per_category_iou"][3]) and math.isnan(art["per_category_accuracy"][3])
    assert art["per_category_accuracy"][:3] == pytest.approx([3 / 4, 3 / 4, 1 / 2])
    assert m["mean_iou"] == pytest.approx((3 / 5 + 3 / 5 + 1 / 3) / 3)
    assert m["mean_accuracy"] == pytest.approx((3 / 4 + 3 / 4 + 1 / 2) / 3)
    assert m["overall_accuracy"] == pytest.approx(7 / 10)


def test_segmentation_reduce_labels() -> None:
    # reduce_labels: 0 becomes ignore, every other id shifts down by one
    label = np.array([[0, 1, 2]])  # -> [ignore, 0, 1]
    pred = np.array([[0, 1, 1]])
    m, art = M.segmentation([pred], [label], num_labels=2, reduce_labels=True)
    assert art["per_category_iou"] == pytest.approx([0.0, 1 / 2])
    assert m["overall_accuracy"] == pytest.approx(1 / 2)


def _gt() -> dict:
    return {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]},
                            {"image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 40]}]}


def test_coco_perfect_and_missed() -> None:
    pytest.importorskip("pycocotools")
    perfect = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
               {"image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 40], "score": 0.8}]
    assert M.coco(_gt(), perfect) == {"map": pytest.approx(1.0), "ap50": pytest.approx(1.0),
                                      "ap75": pytest.approx(1.0)}
    # category b missed entirely: its AP is 0, the mean over the two categories 0.5
    half = perfect[:1] + [{"image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.8}]
    assert M.coco(_gt(), half)["map"] == pytest.approx(0.5)
    assert M.coco(_gt(), []) == {"map": 0.0, "ap50": 0.0, "ap75": 0.0}


def test_coco_iou_between_thresholds() -> None:
    pytest.importorskip("pycocotools")
    # box shifted by 5 px of 30: IoU = 25*30 / (2*900 - 750) = 0.714 -> counts at .50 .. .70, not .75
    dets = [{"image_id": 1, "category_id": 1, "bbox": [15, 10, 30, 30], "score": 0.9},
            {"image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 40], "score": 0.8}]
    m = M.coco(_gt(), dets)
    assert m["ap50"] == pytest.approx(1.0)
    assert m["ap75"] == pytest.approx(0.5)
    # category a: thresholds .50 .. .70 hit (5 of 10); category b all 10
    assert m["map"] == pytest.approx((0.5 + 1.0) / 2)
