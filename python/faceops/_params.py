"""Hyperparameter checks shared by every front (NumPy/CuPy ops, loss objects,
faceops.torch): real numbers only, checked after the cast to the op's dtype,
booleans only for flags, and every message names the argument.

A "real number" is a Python int or float, a NumPy integer or floating scalar,
or a 0-d NumPy array of such a dtype.  Strings, None, complex numbers, bools and
arrays of any other shape are refused: ``margin='0.3'`` is a mistake, not a
margin.
"""

import numbers
import types

import numpy as np


def real(name, value, dtype=np.float64, *, low=None, high=None, low_open=False, high_open=False, what=None):
    """``value`` as a Python float in ``dtype`` (the cast the kernel gets), after checking
    that it is a real number that stays finite in ``dtype`` (1e39 is finite in float64 but
    inf in float32) and lies in [low, high] (``low_open``/``high_open`` exclude the bound);
    ``what`` describes the range in the message (e.g. "a scale > 0").  The range is checked
    on the value as given, so that a bound itself passes (pi is an angle <= pi even though
    float32's pi is slightly above it), and an open bound also on the cast (1e-46 is > 0
    but 0 in float32)."""
    number = _as_real(name, value)
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore", under="ignore"):
        cast = dtype.type(number)
    if not np.isfinite(cast):
        if np.isnan(number):
            kind = "NaN"
        elif np.isinf(number) and isinstance(value, (numbers.Integral, np.integer)):
            kind = "an integer beyond float64's range"
        else:
            kind = f"{number!r}, which is not finite in {dtype.name}"
        raise ValueError(f"{name}: expected a finite number, got {kind}")
    cast = float(cast)
    expected = what or _range(low, high, low_open, high_open)
    if _outside(number, low, high, low_open, high_open):
        raise ValueError(f"{name}: expected {expected}, got {number!r}")
    if (low_open and cast == low) or (high_open and cast == high):
        raise ValueError(f"{name}: expected {expected}, got {number!r}, which is {cast!r} in {dtype.name}")
    return cast


def _outside(value, low, high, low_open, high_open):
    below = low is not None and (value < low or (low_open and value == low))
    above = high is not None and (value > high or (high_open and value == high))
    return below or above


def integer(name, value, *, low=None):
    """``value`` as a Python int (Python or NumPy integer, not bool), at least ``low``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {_describe(value)}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value}")
    return value


# Neither torch nor NumPy can hold an array of 2**63 bytes or more (their sizes are int64).
MAX_ARRAY_BYTES = 2**63 - 1


def matrix_shape(rows_name, rows, cols_name, cols, itemsize):
    """(rows, cols) of a parameter matrix a loss allocates, each an integer >= 1, whose
    rows x cols x itemsize bytes an array can hold (else a ValueError naming both, not
    torch's unnamed "Storage size calculation overflowed")."""
    rows = integer(rows_name, rows, low=1)
    cols = integer(cols_name, cols, low=1)
    if rows * cols * itemsize > MAX_ARRAY_BYTES:
        raise ValueError(f"{rows_name}, {cols_name}: a {rows} x {cols} matrix of {itemsize}-byte elements is "
                         f"{rows * cols * itemsize} bytes, more than an array can hold (2**63 - 1); "
                         f"expected a smaller {rows_name} or {cols_name}")
    return rows, cols


def flag(name, value):
    """``value`` as a bool: only True/False (Python or NumPy bools) are flags; 'false' is not."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {_describe(value)}")
    return bool(value)


def choice(name, value, options):
    """``value`` when it is one of ``options`` (strings), else a ValueError listing them."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {sorted(options)}, got {_describe(value)}")
    return value


# The combined margin's ranges (psi = cos(m1 theta + m2) - m3): m1 multiplies an angle in
# [0, pi] (SphereFace's 4 is the largest in use; past a few the target logit only counts
# half-turns), m2 is an angle, m3 a cosine offset.
M1_RANGE = (0.0, 16.0)
M2_RANGE = (-np.pi, np.pi)
M3_RANGE = (-2.0, 2.0)


def margins(m1, m2, m3, dtype=np.float64):
    """(m1, m2, m3) of the combined margin as Python floats, each checked in ``dtype``."""
    m1 = real("m1", m1, dtype, low=M1_RANGE[0], high=M1_RANGE[1], low_open=True,
              what=f"a multiplicative margin > 0 and <= {M1_RANGE[1]:g}")
    m2 = real("m2", m2, dtype, low=M2_RANGE[0], high=M2_RANGE[1], what="an angle in [-pi, pi]")
    m3 = real("m3", m3, dtype, low=M3_RANGE[0], high=M3_RANGE[1], what="a cosine offset in [-2, 2]")
    return m1, m2, m3


# The named hyperparameters of more than one op, checked the same way by every front.

def hinge_margin(value, dtype=np.float64, name="margin"):
    """A hinge's margin (triplet, contrastive): a number >= 0."""
    return real(name, value, dtype, low=0.0)


def center_alpha(value, dtype=np.float64):
    """Wen et al. eq. 4's learning rate of the centres: 0 <= alpha <= 1."""
    return real("alpha", value, dtype, low=0.0, high=1.0)


def scale(value, dtype=np.float64):
    """The margin softmax's scale s: a number > 0."""
    return real("s", value, dtype, low=0.0, low_open=True, what="a scale > 0")


def sample_rate(value, dtype=np.float64):
    """Partial FC's share of the classes: 0 < sample_rate <= 1."""
    return real("sample_rate", value, dtype, low=0.0, high=1.0, low_open=True, what="0 < sample_rate <= 1")


def margin_triple(margin, names, dtype=np.float64):
    """(m1, m2, m3) as Python floats checked in ``dtype``, from a name of ``names`` (a dict
    name -> triple, faceops.MARGINS) or a tuple or list of three numbers."""
    expected = f"margin: expected one of {sorted(names)} or (m1, m2, m3), got {_describe(margin)}"
    if isinstance(margin, str):
        if margin not in names:
            raise ValueError(expected)
        margin = names[margin]
    if not isinstance(margin, (tuple, list)) or len(margin) != 3:
        raise TypeError(expected)
    return margins(*margin, dtype)


def _as_real(name, value):
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise TypeError(f"{name}: expected a real number, got an array of shape {value.shape}")
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a real number, got the bool {value!r}")
    if isinstance(value, (numbers.Integral, np.integer)):
        try:
            return float(value)
        except OverflowError:  # beyond float64: past every dtype's range
            return float("inf") if value > 0 else float("-inf")
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise TypeError(f"{name}: expected a real number, got {_describe(value)}")


def _describe(value):
    if value is None:
        return "None"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _range(low, high, low_open, high_open):
    if high is None:
        return f"a number {'>' if low_open else '>='} {low}"
    if low is None:
        return f"a number {'<' if high_open else '<='} {high}"
    return f"{low} {'<' if low_open else '<='} value {'<' if high_open else '<='} {high}"


def generator(name, value):
    """``value`` when it is None, a non-negative integer seed or a random generator of NumPy
    or CuPy (a Generator, a RandomState or the numpy.random module: what draws arrays with
    ``random(size)``; Python's random.Random draws one number and is refused)."""
    if value is None or (isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))
                         and value >= 0):
        return value
    module = value.__name__ if isinstance(value, types.ModuleType) else type(value).__module__
    if callable(getattr(value, "random", None)) and module.split(".")[0] in ("numpy", "cupy") \
            and not isinstance(value, type):
        return value
    raise TypeError(f"{name}: expected None, a seed (an integer >= 0) or a NumPy or CuPy random Generator, got "
                    f"{_describe(value)}")


def array_module(name, value):
    """``value`` when it is the numpy or the cupy module (the ``xp`` of a loss object)."""
    if not isinstance(value, types.ModuleType) or value.__name__ not in ("numpy", "cupy"):
        raise TypeError(f"{name}: expected the numpy or the cupy module, got {_describe(value)}")
    return value
