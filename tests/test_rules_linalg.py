"""The null-space helper (``onnxinv.rules.linalg.null_basis``), which the backward pass's families
and the exact sampler's slices share.

Core assertions: the basis is orthonormal, ``A`` maps it to zero, and it has ``columns − rank``
vectors, for wide, tall, square, rank-deficient and zero matrices; singular values below
``rtol`` times the largest count as zero.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxinv.rules.linalg import null_basis


def matrices():
    rng = np.random.default_rng(0)
    yield "wide", rng.normal(size=(3, 8)), 5
    yield "tall", rng.normal(size=(8, 3)), 0
    yield "square", rng.normal(size=(4, 4)), 0
    yield "rank 2 of 6", rng.normal(size=(5, 2)) @ rng.normal(size=(2, 6)), 4
    yield "zero", np.zeros((3, 4)), 4
    yield "no rows", np.zeros((0, 4)), 4


@pytest.mark.parametrize("name, A, nullity", list(matrices()), ids=lambda v: str(v)[:12])
def test_null_basis_is_an_orthonormal_basis_of_the_null_space(name, A, nullity):
    N = null_basis(A)
    assert N.shape == (A.shape[1], nullity), name
    np.testing.assert_allclose(N.T @ N, np.eye(nullity), atol=1e-12)
    np.testing.assert_allclose(A @ N, 0.0, atol=1e-12)


def test_null_basis_cuts_small_singular_values_relative_to_the_largest():
    A = np.diag([1.0, 1e-11, 1e-9])
    assert null_basis(A).shape == (3, 1)  # 1e-11 < 1e-10 · 1 is zero, 1e-9 is not
    assert null_basis(A, rtol=1e-8).shape == (3, 2)
    np.testing.assert_allclose(np.abs(null_basis(A)[:, 0]), [0.0, 1.0, 0.0])


def test_null_basis_of_no_columns_is_empty():
    assert null_basis(np.zeros((3, 0))).shape == (0, 0)
