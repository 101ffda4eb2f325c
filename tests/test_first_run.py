"""The first run's output (#23): short prediction summaries, apply's progress lines."""

from __future__ import annotations

from kiln.controller.deployment_cli import summarize_answer


def test_a_detection_answer_is_summarised_as_its_number_of_boxes_and_the_best_ones() -> None:
    boxes = [{"circle": {"xmin": i, "ymin": 2, "xmax": 30, "ymax": 40}, "score": 0.9 - i / 100} for i in range(40)]
    assert summarize_answer({"predictions": [boxes]}) == [
        "40 boxes; best: circle 0.90 at (0,2)-(30,40), circle 0.89 at (1,2)-(30,40), circle 0.88 at (2,2)-(30,40)"]
    assert summarize_answer({"predictions": [[]]}) == ["0 boxes"]


def test_a_classification_answer_is_summarised_as_its_best_labels() -> None:
    one = [{"score": 0.97, "label": "7"}, {"score": 0.02, "label": "1"}, {"score": 0.006, "label": "2"},
           {"score": 0.004, "label": "3"}]
    assert summarize_answer(one) == ["7 (0.970), 1 (0.020), 2 (0.006)"]
    assert summarize_answer([one[:1], one[1:2]]) == ["[0] 7 (0.970)", "[1] 1 (0.020)"]


def test_other_answers_stay_short() -> None:
    assert summarize_answer({"predictions": [[[0, 1], [2, 2]]]}) == ["mask 2x2, classes [0, 1, 2]"]
    assert summarize_answer({"predictions": [3.25]}) == ["3.25"]
    long = summarize_answer({"predictions": [{"x": "y" * 500}]})[0]
    assert len(long) == 200 and long.endswith("...")
