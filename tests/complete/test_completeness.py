"""What a series' own headers and arrival pattern say about whether more is coming (node.complete.completeness).

The end-to-end cases (a CT sent in two parts, ImagesInAcquisition) are in test_one_answer.py;
these pin the rules on hand-made headers, including the cases that must NOT hold a series back.
"""

from __future__ import annotations

from node.complete.completeness import SliceHeader, adapted_seconds, expected_more

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def axial(z: float, **extra: object) -> SliceHeader:
    values = {"acquisition": "1", "position": (0.0, 0.0, z), "orientation": AXIAL, "images_in_acquisition": None,
              "temporal_positions": None, "cardiac_images": None, **extra}
    return SliceHeader(**values)  # type: ignore[arg-type]


def test_evenly_spaced_stack_expects_nothing_more():
    assert expected_more([axial(3.0 * k) for k in range(20)]) is None


def test_slices_missing_inside_the_stack_are_counted():
    present = [k for k in range(20) if k not in (5, 6, 12)]
    expectation = expected_more([axial(3.0 * k) for k in present])
    assert expectation is not None and expectation.missing == 3


def test_uneven_steps_that_are_not_whole_multiples_are_not_a_gap():
    # e.g. a helical series with 2.5 mm and 3.7 mm steps: uneven, but nothing is missing
    zs = [0.0, 2.5, 6.2, 8.7, 12.4, 14.9]
    assert expected_more([axial(z) for z in zs]) is None


def test_localizers_in_another_orientation_do_not_look_like_gaps():
    stack = [axial(3.0 * k) for k in range(10)]
    scouts = [SliceHeader("1", (0.0, y, 0.0), CORONAL, None, None, None) for y in (-50.0, 80.0)]
    assert expected_more(stack + scouts) is None


def test_images_in_acquisition_not_reached_expects_the_rest():
    headers = [axial(3.0 * k, images_in_acquisition=30) for k in range(12)]
    expectation = expected_more(headers)
    assert expectation is not None and expectation.missing == 18
    assert "ImagesInAcquisition is 30, 12 arrived" in expectation.reason


def test_dynamic_series_waits_for_every_time_point_of_every_slice():
    headers = [axial(5.0 * k, temporal_positions=3) for k in range(4) for _ in range(3)]
    assert expected_more(headers) is None
    expectation = expected_more(headers[:-2])
    assert expectation is not None and expectation.missing == 2
    assert "NumberOfTemporalPositions" in expectation.reason


def test_cine_series_waits_for_every_cardiac_phase():
    headers = [axial(8.0 * k, cardiac_images=25) for k in range(3) for _ in range(25)]
    assert expected_more(headers) is None
    expectation = expected_more(headers[:60])
    assert expectation is not None and expectation.missing == 15


def test_settle_time_grows_with_a_slowly_arriving_series_and_never_drops_below_the_floor():
    fast = [k * 0.01 for k in range(50)] + [10 + k * 0.01 for k in range(49)]  # two bursts, a 10 s pause
    assert adapted_seconds(fast, 2.0) == 2.0
    slow = [k * 3.0 for k in range(10)]  # one image every 3 s: 5 x 3 s
    assert adapted_seconds(slow, 2.0) == 15.0
    assert adapted_seconds([], 2.0) == adapted_seconds([1.0], 2.0) == 2.0
