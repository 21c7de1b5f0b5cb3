"""The shared scalar checks: wrong type -> TypeError, out of range -> ValueError, both named."""

import math

import numpy as np
import pytest

from numpyllm._checks import check_int, check_real, check_token_ids


@pytest.mark.parametrize("value, minimum, optional, expected", [
    (0, 0, False, 0),
    (5, 1, False, 5),
    (np.int64(7), 1, False, 7),
    (np.uint8(3), 0, False, 3),
    (None, 1, True, None),
    (-2, -3, False, -2),
])
def test_check_int_accepts_and_returns_plain_ints(value, minimum, optional, expected):
    result = check_int(value, "n", minimum, optional=optional)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("value, minimum, optional, error, message", [
    (0, 1, False, ValueError, "^n must be >= 1, got 0$"),
    (-1, 0, True, ValueError, "^n must be >= 0 or None, got -1$"),
    (True, 0, False, TypeError, "^n must be an int >= 0, got bool True$"),
    (np.bool_(True), 0, False, TypeError, "^n must be an int >= 0, got bool "),  # NumPy 2 shows np.True_
    (3.0, 0, False, TypeError, "^n must be an int >= 0, got float 3.0$"),
    ("3", 0, True, TypeError, "^n must be an int >= 0 or None, got str '3'$"),
    (None, 0, False, TypeError, "^n must be an int >= 0, got NoneType None$"),
    (np.arange(3), 0, False, TypeError, r"^n must be an int >= 0, got ndarray array\(\[0, 1, 2\]\)$"),
])
def test_check_int_rejects_naming_argument_expectation_and_value(value, minimum, optional, error, message):
    with pytest.raises(error, match=message):
        check_int(value, "n", minimum, optional=optional)


@pytest.mark.parametrize("value, bounds, expected", [
    (0, dict(low=0), 0.0),
    (2.5, dict(), 2.5),
    (np.float32(0.5), dict(low=0, high=1), 0.5),
    (1, dict(low=0, high=1, high_inclusive=True), 1.0),
    (math.inf, dict(low=0, high=math.inf, high_inclusive=True), math.inf),
    (None, dict(optional=True), None),
])
def test_check_real_accepts_and_returns_plain_floats(value, bounds, expected):
    result = check_real(value, "x", **bounds)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("value, bounds, error, message", [
    (0.0, dict(low=0, low_inclusive=False), ValueError, r"^x must be in \(0, inf\), got 0.0$"),
    (1.0, dict(low=0, high=1), ValueError, r"^x must be in \[0, 1\), got 1.0$"),
    (-0.5, dict(low=0.0), ValueError, r"^x must be in \[0.0, inf\), got -0.5$"),
    (math.inf, dict(low=0), ValueError, r"^x must be in \[0, inf\), got inf$"),
    (math.nan, dict(), ValueError, r"^x must be in \[-inf, inf\), got nan$"),
    (math.nan, dict(low=0, high=1, low_inclusive=False, high_inclusive=True, optional=True), ValueError,
     r"^x must be in \(0, 1\] or None, got nan$"),
    (False, dict(low=0), TypeError, r"^x must be a real number in \[0, inf\), got bool False$"),
    ("0.5", dict(low=0, high=1), TypeError, r"^x must be a real number in \[0, 1\), got str '0.5'$"),
    (None, dict(), TypeError, r"^x must be a real number in \[-inf, inf\), got NoneType None$"),
    (1j, dict(), TypeError, r"^x must be a real number in \[-inf, inf\), got complex 1j$"),
])
def test_check_real_rejects_naming_argument_interval_and_value(value, bounds, error, message):
    with pytest.raises(error, match=message):
        check_real(value, "x", **bounds)


def test_a_hint_follows_the_expectation_in_both_errors():
    with pytest.raises(ValueError, match=r"^n must be >= 2 \(two ends\), got 1$"):
        check_int(1, "n", 2, hint="two ends")
    with pytest.raises(TypeError, match=r"^n must be an int >= 2 \(two ends\), got float 1.0$"):
        check_int(1.0, "n", 2, hint="two ends")
    with pytest.raises(ValueError, match=r"^t must be in \[0, inf\) \(0: greedy\), got -1$"):
        check_real(-1, "t", 0, hint="0: greedy")
    with pytest.raises(TypeError, match=r"^t must be a real number in \[0, inf\) \(0: greedy\), got str 'x'$"):
        check_real("x", "t", 0, hint="0: greedy")


@pytest.mark.parametrize("ids, low", [
    ([[0, 4], [2, 1]], 0),
    (np.array([4], dtype=np.uint16), 0),
    (np.array([-1, 0, 4]), -1),  # targets: -1 is the ignore index
    ([], 0),  # float64 when made an array, but no id of the wrong type
])
def test_check_token_ids_accepts_integer_ids_in_range(ids, low):
    result = check_token_ids(ids, "ids", 5, low)
    assert isinstance(result, np.ndarray)
    np.testing.assert_array_equal(result, ids)


@pytest.mark.parametrize("ids, low, error, message", [
    ([[0, 5]], 0, ValueError, r"^ids entries must be in \[0, 5\), got 5$"),
    ([3, -1, 7], 0, ValueError, r"^ids entries must be in \[0, 5\), got -1$"),  # the first bad one
    ([-2, 0], -1, ValueError, r"^ids entries must be in \[-1, 5\), got -2$"),
    (np.array([70_000], dtype=np.uint32), 0, ValueError, r"^ids entries must be in \[0, 5\), got 70000$"),
    ([1.0, 2.0], 0, TypeError, "^ids must be an integer array of token ids, got dtype float64$"),
    ([True], 0, TypeError, "^ids must be an integer array of token ids, got dtype bool$"),
])
def test_check_token_ids_rejects_naming_the_range_and_the_bad_id(ids, low, error, message):
    with pytest.raises(error, match=message):
        check_token_ids(ids, "ids", 5, low)
