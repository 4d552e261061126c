"""``--keep-largest``: each chosen class keeps its largest connected component (full connectivity), as nnU-Net's.

The command-line path is tested in test_predict.py (it reuses that module's tiny CT run)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from attnseg.config import ConfigError
from attnseg.inference.postprocess import keep_largest_component, parse_classes


def test_hand_computed_map_keeps_the_largest_island_with_diagonal_neighbours():
    labels = np.array(
        [
            [1, 1, 0, 0, 2],
            [1, 0, 0, 0, 2],
            [0, 0, 1, 0, 0],  # (2, 2) touches (3, 3) only by a corner: one component of 5 under full connectivity
            [0, 0, 0, 1, 1],
            [2, 0, 0, 1, 1],
        ],
        np.uint8,
    )
    only_1 = labels.copy()
    only_1[:2, :2] = 0  # the 3-pixel island of class 1 goes; class 2 is untouched
    np.testing.assert_array_equal(keep_largest_component(labels, (1,)), only_1)
    both = only_1.copy()
    both[4, 0] = 0  # class 2's single pixel goes, its 2-pixel island stays
    np.testing.assert_array_equal(keep_largest_component(labels, (1, 2)), both)
    np.testing.assert_array_equal(keep_largest_component(labels, ()), labels)


def test_volume_matches_a_per_class_scipy_oracle():
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 10, 8)) * 3).astype(np.uint8) * (rng.random((12, 10, 8)) > 0.6)
    got = keep_largest_component(labels, (1, 2))
    for c in (1, 2):
        comp, n = ndimage.label(labels == c, structure=np.ones((3, 3, 3)))
        assert n > 1  # the random map is fragmented, so the check below can fail
        largest = np.bincount(comp.ravel())[1:].argmax() + 1
        np.testing.assert_array_equal(got == c, comp == largest)
    assert ((got == 0) == ((labels == 0) | ((labels > 0) & (got != labels)))).all()


def test_class_names_ids_and_all_are_parsed_and_unknown_names_refused():
    names = {0: "background", 1: "liver", 2: "spleen"}
    assert parse_classes("all", names, 3) == (1, 2)
    assert parse_classes("spleen, 1,spleen", names, 3) == (2, 1)
    with pytest.raises(ConfigError, match=r"^--keep-largest: 'kidney' is not a foreground class .*liver=1, spleen=2"):
        parse_classes("kidney", names, 3)
    with pytest.raises(ConfigError, match="'0' is not a foreground class"):
        parse_classes("0", names, 3)
