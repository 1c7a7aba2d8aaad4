from __future__ import annotations

import numpy as np
import pytest
import torch

from hw1.reporting import figures


def test_the_confused_block_names_the_classes_with_the_most_mistakes():
    confusion = torch.eye(30, dtype=torch.long) * 10
    confusion[3, 17] = confusion[17, 3] = 8  # 3 and 17 mix up
    confusion[25, 5] = 9
    picked = figures.confused_classes(confusion, k=4)
    assert len(picked) == 4 and {3, 17, 25, 5} == set(picked) and picked == sorted(picked)


def test_a_hundred_class_confusion_matrix_is_two_readable_panels():
    confusion = torch.eye(100, dtype=torch.long) * 20 + torch.randint(0, 3, (100, 100))
    image = figures.confusion_image(confusion, [f"class_{i}" for i in range(100)])
    # The whole matrix beside the labelled block, at a size TensorBoard shows whole.
    assert 1000 <= image.width <= 1600 and image.height < image.width
    small = figures.confusion_image(confusion[:5, :5], list("abcde"))
    assert small.width < 900 and abs(small.width - small.height) < 200
    rows = figures.normalised(confusion[:5, :5])
    np.testing.assert_allclose(rows.sum(axis=1), 1)


def test_charts_draw_their_data():
    blank = figures.line_chart("t", {})
    drawn = figures.line_chart("t", {"a": [[(1, 0.5), (2, 0.6)]], "b": [[(1, 0.2), (3, 0.3)]]})
    assert np.asarray(drawn).std() > np.asarray(blank).std()
    bins = [{"lo": 0.8, "hi": 0.9, "images": 3, "confidence": 0.85, "accuracy": 0.5}]
    reliability = figures.reliability_diagram({"before": (bins, 0.3), "after": (bins, 0.1)})
    assert reliability.width > 1.8 * reliability.height
    rows = [{"class": c, "f1": f} for c, f in (("a", 0.2), ("b", 0.9), ("c", None))]
    assert figures.per_class_f1_chart(rows).height >= 200


def test_the_overlay_is_red_where_the_heat_is():
    image = np.full((8, 8, 3), 128, np.uint8)
    heat = np.zeros((8, 8))
    heat[:4, :4] = 1
    overlay, coloured = figures.heat_overlay(image, heat)
    assert coloured[0, 0, 0] > 100 > coloured[0, 0, 2]  # red at 1
    assert coloured[7, 7, 2] > 100 > coloured[7, 7, 0]  # blue at 0
    assert overlay.shape == image.shape and overlay.dtype == np.uint8


def test_the_tensorboard_card_names_the_most_confused_pairs_at_the_cards_shape():
    confusion = torch.eye(100, dtype=torch.long) * 20
    confusion[3, 17], confusion[40, 41], confusion[99, 0] = 10, 5, 2
    assert [(i, j) for i, j, _ in figures.confused_pairs(confusion)] == [(3, 17), (40, 41), (99, 0)]
    assert figures.confused_pairs(confusion)[0][2] == pytest.approx(10 / 30)
    card = figures.confusion_card(confusion, [f"class_{i}" for i in range(100)])
    # TensorBoard fits an image card into about 360 x 200 px: the card keeps that shape at
    # twice the size, so its 14 pt text is about 10 px there (eval's confusion.png is 1300 px
    # wide, its labels 3 px there).
    assert card.size == (720, 400)
    assert figures.confused_pairs(torch.eye(5, dtype=torch.long)) == []
