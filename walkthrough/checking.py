"""The check every chapter of the walkthrough uses: a computed value against a
known one, within a relative tolerance, printed as it passes. Not a chapter."""

import numpy as np


def check(name, got, want, tol):
    """Raise AssertionError unless got matches want: the largest difference, as a
    fraction of the largest |want|, must not exceed tol."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))), np.finfo(np.float64).tiny)
    error = float(np.max(np.abs(got - want))) / scale
    if not error <= tol:  # also fails on NaN
        raise AssertionError(f"{name}: relative error {error:.1e} > tolerance {tol:.0e}")
    print(f"  ok  {name}: relative error {error:.1e} <= {tol:.0e}")
