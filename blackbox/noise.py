"""Perturbation directions for likelihood-ratio estimators.

Six families, all returning rows with mean 0 and identity covariance; the first three are
standard normal (each row marginally N(0, I)):

* ``gaussian``: i.i.d. normals.
* ``orthogonal``: rows drawn in groups of ``d`` that are mutually orthogonal, each with the norm of
  an independent Gaussian vector (so the marginal law is unchanged but directions do not repeat
  each other: lower variance for the same number of queries).
* ``halton``: randomised quasi-Monte-Carlo (Halton points with random digit permutations and a
  random shift, mapped through the inverse normal CDF). Best in low dimension (up to ~100).
* ``rademacher``: independent random signs +-1: the largest perturbation a bounded coordinate
  allows for its variance (in mask space around m = 0.5 with sigma 0.5: binary masks, each
  antithetic pair a mask and its complement).
* ``hadamard``: random signs in blocks of ``N`` rows (``N`` the power of two above ``d``) whose
  columns are mutually orthogonal and balanced: ``d`` random non-constant columns of a Sylvester
  Hadamard matrix, each with a random sign, rows in random order. Over a whole block every pair
  of coordinates is perturbed alike exactly as often as oppositely (a two-level orthogonal
  design), so least squares sees no cross-talk between coordinates.
* ``coordinate``: one coordinate at a time, ``sqrt(d) e_c``, each coordinate once per block of
  ``d`` rows in random order: with the baseline control, finite differences (the end of the
  family where no answer carries another coordinate's effect; d + 1 queries per full gradient).
"""
from __future__ import annotations

import numpy as np

NOISE_KINDS = ("gaussian", "orthogonal", "halton", "rademacher", "hadamard", "coordinate")
_BYTE_PARITY = np.array([bin(b).count("1") & 1 for b in range(256)], dtype=np.uint8)


def _first_primes(k: int) -> np.ndarray:
    primes: list[int] = []
    candidate = 2
    while len(primes) < k:
        if all(candidate % p for p in primes if p * p <= candidate):
            primes.append(candidate)
        candidate += 1
    return np.array(primes)


def norm_ppf(p: np.ndarray) -> np.ndarray:
    """Inverse standard normal CDF (Acklam's rational approximation)."""
    p = np.asarray(p, dtype=np.float64)
    a = [-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00]
    b = [-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01]
    c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00]
    d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00]
    lo, hi = 0.02425, 1 - 0.02425
    x = np.empty_like(p)
    m = p < lo
    q = np.sqrt(-2 * np.log(p[m]))
    x[m] = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    m = p > hi
    q = np.sqrt(-2 * np.log(1 - p[m]))
    x[m] = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    m = (p >= lo) & (p <= hi)
    q = p[m] - 0.5
    r = q * q
    x[m] = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    return x  # absolute error below 1e-8: far below any Monte Carlo noise


class NoiseSource:
    """Reproducible stream of standard-normal perturbation rows of dimension ``dim``."""

    def __init__(self, dim: int, kind: str = "gaussian", seed: int | np.random.Generator | None = None):
        if kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise kind {kind!r}; choose from {', '.join(NOISE_KINDS)}")
        self.dim = int(dim)
        self.kind = kind
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._index = 0
        self._pending = np.empty((0, self.dim))
        if kind == "halton":
            self._bases = _first_primes(self.dim)
            self._digits = np.maximum(1, np.ceil(np.log(2 ** 32) / np.log(self._bases))).astype(int)
            self._perms = [[np.concatenate([[0], 1 + self.rng.permutation(int(b) - 1)])
                            for _ in range(int(k))] for b, k in zip(self._bases, self._digits)]
            self._shift = self.rng.random(self.dim)

    def draw(self, n: int) -> np.ndarray:
        if self.kind == "gaussian":
            return self.rng.standard_normal((n, self.dim))
        if self.kind == "orthogonal":
            return self._orthogonal(n)
        if self.kind == "rademacher":
            return np.where(self.rng.random((n, self.dim)) < 0.5, -1.0, 1.0)
        if self.kind == "hadamard":
            return self._blocks(n, self._hadamard_block)
        if self.kind == "coordinate":
            return self._blocks(n, self._coordinate_block)
        return self._halton(n)

    def _orthogonal(self, n: int) -> np.ndarray:
        return self._blocks(n, self._orthogonal_block)

    def _blocks(self, n: int, block) -> np.ndarray:
        """``n`` rows from whole blocks, the rest of the last block kept for the next draw."""
        rows = [self._pending]
        have = len(self._pending)
        while have < n:
            rows.append(block())
            have += len(rows[-1])
        allrows = np.concatenate(rows)
        self._pending = allrows[n:]
        return allrows[:n]

    def _orthogonal_block(self) -> np.ndarray:
        g = self.rng.standard_normal((self.dim, self.dim))
        q, r = np.linalg.qr(g)
        q = q * np.sign(np.diag(r))  # Haar-distributed orthogonal matrix
        norms = np.sqrt(self.rng.chisquare(self.dim, size=self.dim))
        return q.T * norms[:, None]

    def _coordinate_block(self) -> np.ndarray:
        return np.eye(self.dim)[self.rng.permutation(self.dim)] * np.sqrt(self.dim)

    def _hadamard_block(self) -> np.ndarray:
        size = 1 << int(self.dim).bit_length()  # > dim: a non-constant column for every coordinate
        columns = 1 + self.rng.choice(size - 1, self.dim, replace=False)
        signs = np.where(self.rng.random(self.dim) < 0.5, -1.0, 1.0)
        bits = np.bitwise_and(self.rng.permutation(size)[:, None], columns[None, :])  # rows in random order
        parity = np.zeros(bits.shape, dtype=np.uint8)
        while bits.any():  # Sylvester: H[i, j] = (-1)^popcount(i & j), a byte at a time
            parity ^= _BYTE_PARITY[bits & 255]
            bits >>= 8
        return (1.0 - 2.0 * parity) * signs

    def _halton(self, n: int) -> np.ndarray:
        idx = np.arange(self._index + 1, self._index + n + 1)
        self._index += n
        out = np.empty((n, self.dim))
        for j, (b, k) in enumerate(zip(self._bases, self._digits)):
            b = int(b)
            value = np.zeros(n)
            i = idx.copy()
            scale = 1.0 / b
            for digit in range(int(k)):
                value += self._perms[j][digit][i % b] * scale
                i //= b
                scale /= b
            out[:, j] = value
        u = (out + self._shift) % 1.0
        u = np.clip(u, 1e-12, 1 - 1e-12)
        return norm_ppf(u)
