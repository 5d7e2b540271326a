"""The label lookups against the official toolkit's table (cityscapesscripts)."""
import numpy as np
from cityscapesscripts.helpers import labels as official

from base import labels
from base.class_table import CITYSCAPES


def test_label_to_train_lut_matches_official_table():
    lut = labels.label_to_train_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    for lab in official.labels:
        if lab.id < 0:
            continue
        expected = lab.trainId if 0 <= lab.trainId < 255 else 255
        assert lut[lab.id] == expected, lab.name
    assert (lut[34:] == 255).all()


def test_train_to_label_and_palette_match_official_table():
    to_label = labels.train_to_label_lut()
    palette = CITYSCAPES.palette_lut()
    for lab in official.labels:
        if 0 <= lab.trainId < 255:
            assert to_label[lab.trainId] == lab.id
            assert tuple(palette[lab.trainId]) == lab.color
    assert to_label[255] == 0


def test_names_and_categories_in_train_id_order():
    expected = [l for l in sorted(official.labels, key=lambda l: l.trainId) if 0 <= l.trainId < 255]
    assert labels.CLASS_NAMES == tuple(l.name for l in expected)
    cats = labels.category_of_class()
    assert [labels.CATEGORIES[c] for c in cats] == [l.category for l in expected]
    assert len(labels.CATEGORIES) == 7


def test_full_table_matches_official():
    mine = {(l.name, l.id, l.train_id, l.category, l.has_instances, l.ignore_in_eval, l.color) for l in labels.LABELS}
    theirs = {(l.name, l.id, l.trainId, l.category, l.hasInstances, l.ignoreInEval, l.color) for l in official.labels}
    assert mine == theirs
