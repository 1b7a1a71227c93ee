r"""Streaming PCA: scikit-learn's ``IncrementalPCA`` estimator computed by Brand updates.

:class:`StreamingPCA` keeps the top-k principal components of data that arrives in batches of
rows (samples x features). With ``decay=None`` it is the estimator of scikit-learn's
``IncrementalPCA`` (Ross et al. 2008) on the same batches: after every batch the top-k
right singular vectors of the centred data seen so far, truncated to k as scikit-learn does.
scikit-learn gets them from a dense SVD of the stacked ``(k + n + 1) x d`` matrix
``[diag(S) V^T; X_b - mean_b; mean correction]``. Here the same matrix is never formed: the
held factor ``V`` (d x k) is updated by a one-sided Brand update (paper 001, Alg. 2 with the
sample side dropped), in ``O(d (k + n)^2)`` GEMM-rich flops plus one ``(k + n)``-sized core
SVD. With ``decay=rho`` every batch multiplies the weight of everything seen before by
``rho``.

The arithmetic lives in pure functions over a :class:`PCAState`; the estimator is a thin shell
that validates input, calls them and swaps in the new state only when they returned.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import array_api_compat
import array_api_extra as xpx
import numpy as np

from . import _array, _backend, _linalg, _validate

__all__ = ["StreamingPCA"]

try:  # scikit-learn is optional: with it the estimator is a real scikit-learn estimator
    from sklearn.base import BaseEstimator as _SkBase
    from sklearn.base import ClassNamePrefixFeaturesOutMixin as _SkNames
    from sklearn.base import TransformerMixin as _SkTransformer
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_array as _sk_check_array
    from sklearn.utils.validation import validate_data as _sk_validate_data
except ImportError:  # pragma: no cover - exercised by the no-scikit-learn subprocess test
    _SKLEARN = False
else:
    _SKLEARN = True


# --------------------------------------------------------------------------------------------
# state and pure functions
# --------------------------------------------------------------------------------------------
class PCAState(NamedTuple):
    """Fitted state: plain arrays (in the data's namespace, device and dtype) and numbers."""

    components: Any  # (d, k) tall, orthonormal columns: components_.T
    singular_values: Any  # (k,)
    mean: Any  # (d,)
    var: Any  # (d,)
    n_samples_seen: float  # int without decay
    explained_variance: Any  # (k,)
    explained_variance_ratio: Any  # (k,)
    noise_variance: float
    n_batches: int
    batch_size: int | None  # set by fit only (scikit-learn's batch_size_)


def _nan_safe_inverse(x: float) -> float:
    # scikit-learn divides by zero here (one sample, constant data) and gets nan with a
    # RuntimeWarning; the same nan, quietly, on every backend.
    return 1.0 / x if x != 0 else math.nan


def _outside_directions(V: Any, m: int, be: _backend.Backend) -> Any:
    """``m`` orthonormal directions orthogonal to span(V), from a fixed seed.

    They fill the components whose singular value is zero (a first batch of n rows has rank
    n - 1 once centred; constant or duplicate data has less). Any orthonormal completion is as
    valid as another, as in every SVD; a fixed seed makes it the same on every backend.
    """
    G = be.normal(np.random.default_rng(0), (V.shape[0], m))
    comp = _linalg.complement(V, G, be)
    P = be.matmul(comp.tall, be.from_core(comp.zp))
    return P[:, :m]


def _update(state: PCAState | None, X: Any, k: int, decay: float | None, xp: Any) -> PCAState:
    r"""One batch ``X`` (n x d, validated, in the state's namespace and dtype) into the state.

    With ``w = rho N / N'`` (``N`` the weight seen so far, ``N' = rho N + n``, ``rho = 1``
    without decay), the new weighted scatter matrix about the new mean is

    .. math:: S' = \rho S + X_c^T X_c + c c^T, \qquad c = \sqrt{w n}\, (\mu - m_b),

    with ``X_c`` the batch centred on its own mean ``m_b``: scikit-learn's stacked matrix
    without the held part. Its n rows are linearly dependent (they sum to zero), which would
    send every update to the complement's slow rank-revealing path; a Householder reflection
    that maps ``1 / sqrt(n)`` to ``e_1`` replaces them by n - 1 rows with the same Gram matrix,
    ``x_i - b`` (i >= 2) with ``b = m_b + (m_b - x_1) / (sqrt(n) - 1)``, in O(nd). The mean
    correction ``c`` takes the freed first row, scaled to the rows' typical norm (and scaled
    back in the core): a correction much smaller or much larger than the batch (a stationary
    stream; a drifting one) would otherwise make the block's Gram matrix ill-conditioned.

    The increment ``A = B^T`` (d x n) is written against the held basis, ``A = V C + P R``
    (``_linalg.complement``), and the top-k left singular vectors of the small core
    ``[[sqrt(rho) diag(S), C], [0, R]]`` rotate ``[V P]`` into the new basis. The right factor
    of that SVD (the sample side) is never used: only one complement is computed, on the
    feature side, and the core is factorized by SVD, not squared.

    When the held rank plus the batch's rows reach d (in memory), the complement would span
    all of R^d and take its slow rank-revealing path: the stacked matrix's d x d R factor and
    the SVD of R give the same triplets (``_dense_update``), still without the left factor.
    """
    n, d = X.shape
    first = state is None
    rho = 1.0 if decay is None else float(decay)
    N = 0 if first else state.n_samples_seen
    N_new = N + n if decay is None else rho * N + n
    w = rho * N / N_new
    be = _backend.backend_of(X.T if first else state.components, xp)
    X = be.persist(X)  # read by the mean, the shift and the increment: materialised once
    # The batch mean is read by the shift, the statistics and the new mean: computed once. (On
    # Dask, a key computed by one graph and then again by a later persisted one leaves released
    # records on the scheduler; every intermediate read twice is persisted.)
    m = be.persist(xp.mean(X, axis=0))
    # Householder-centred rows (the first row of B is a placeholder, see above), read by the
    # statistics and by the update
    B = be.persist(X - (m + (m - X[0, :]) / (math.sqrt(n) - 1.0)) if n > 1 else X * 0.0)
    centred = B[1:, :]
    sq = xp.sum(centred * centred, axis=0)
    if first:
        mean, scatter = m, sq
        (batch_sq,) = _array.to_floats(xp, xp.sum(sq))
        delta_sq = held_sq = 0.0
        delta = None
    else:
        delta = state.mean - m
        mean = m + w * delta
        # diag(B^T B) is the increment of the scatter's diagonal: no cancellation, unlike
        # sum(x^2) - n m^2.
        scatter = (rho * N) * state.var + sq + (w * n) * (delta * delta)
        delta_sq, batch_sq, held_sq = _array.to_floats(
            xp, xp.sum(delta * delta), xp.sum(sq), (rho * N) * xp.sum(state.var)
        )
    var = scatter / N_new
    total = held_sq + batch_sq + w * n * delta_sq
    if not math.isfinite(total):
        if _array.is_lazy(xp) and not be.all_finite(X):
            # The lazy batch was not checked on entry (see _validate): its statistics are the
            # first small results, and the pass that names it runs on this error path only.
            raise ValueError("`X` contains NaN or infinity (found when the batch statistics were computed)")
        raise _linalg.DecompositionError("the updated spectrum overflows; scale the data or use float64")
    c_norm = math.sqrt(w * n * delta_sq)
    r = 0 if first else state.components.shape[1]
    rows = n - 1 + (c_norm > 0.0)
    if rows and r + rows >= d and not _array.is_lazy(xp):
        # As many rows as features: the span of [V, B^T] is all of R^d, and Brand's complement
        # would take its slow rank-revealing path for nothing.
        if c_norm > 0.0:
            B[0, :] = math.sqrt(w * n) * delta
        else:
            B = centred
        V, s = _dense_update(state, B, rho, be, xp)
    else:
        if c_norm > 0.0:
            typical = math.sqrt(batch_sq / (n - 1)) if n > 1 and batch_sq > 0.0 else c_norm
            B[0, :] = (typical * math.sqrt(w * n) / c_norm) * delta
            col_scale = [c_norm / typical] + [1.0] * (n - 1)
        else:  # first batch, or a batch mean equal to the running mean
            B, col_scale = centred, [1.0] * (n - 1)
        V, s = _brand_update(state, B, col_scale, rho, k, d, be, xp)
    if not be.all_finite(s):
        raise _linalg.DecompositionError("the updated spectrum overflows; scale the data or use float64")
    q = min(k, s.shape[0])
    V = V[:, :q]
    if q < k:
        V = be.join_columns([V, _outside_directions(V, k - q, be)])
    # The sign convention of scikit-learn's svd_flip(u_based_decision=False): the
    # largest-magnitude entry of every component is positive.
    V, _ = _linalg.flip_signs(V, xp, be)

    cxp = be.cxp
    s2 = s * s
    inv_dof = _nan_safe_inverse(N_new - 1)
    kept = cxp.concat([s2[:q], be.zeros((k - q,))])
    rank_all = min(n, d) if first else min(r + n + 1, d)  # scikit-learn's number of singular values
    if k in (n, d):  # scikit-learn's rule, on the rows of this batch
        noise = 0.0
    else:
        noise = float(cxp.sum(s2[k:])) * inv_dof / (rank_all - k)
    V, mean, var = be.detach(V, mean, var)
    return PCAState(
        components=V,
        singular_values=be.from_core(cxp.sqrt(kept)),
        mean=mean,
        var=var,
        n_samples_seen=N_new,
        explained_variance=be.from_core(kept * inv_dof),
        explained_variance_ratio=be.from_core(kept * _nan_safe_inverse(total)),
        noise_variance=noise,
        n_batches=1 if first else state.n_batches + 1,
        batch_size=None if first else state.batch_size,
    )


def _brand_update(
    state: PCAState | None, B: Any, col_scale: list[float], rho: float, k: int, d: int,
    be: _backend.Backend, xp: Any,
) -> tuple[Any, Any]:
    """(top-k left singular vectors, all singular values) of ``[sqrt(rho) V S, B^T D]`` by one
    complement of the increment ``B^T`` (its columns scaled by ``D^-1 = diag(1/col_scale)``)
    against V and the SVD of the small core."""
    first = state is None
    if first:
        # An empty basis of its own, not A[:, :0]: on Dask a slice keeps A's lineage, and
        # CholeskyQR2 passes of the complement over it leave released records on the scheduler
        # (client.restart() then fails).
        (A,) = _array.align_tall(("X", B.T), xp=xp)
        empty = xp.zeros((d, 1), dtype=A.dtype, device=_array.device(A))[:, :0]  # Dask chunks no (d, 0)
        _, V0 = _array.align_tall(("X", A), ("components_", empty), xp=xp)
    else:
        V0, A = _array.align_tall(("components_", state.components), ("X", B.T), xp=xp)
    be = _backend.backend_of(V0, xp)
    cxp = be.cxp
    r = V0.shape[1]
    be.watch(("X", A))  # a lazy X is checked for NaN / infinity on the small cores
    held = be.zeros((0,)) if first else be.to_core(state.singular_values) * math.sqrt(rho)
    if A.shape[1]:
        try:
            comp = _linalg.complement(V0, A, be)
        except FloatingPointError as err:  # the Gram matrix of the batch overflowed
            raise _linalg.DecompositionError(
                f"the updated spectrum overflows ({err}); scale the data or use float64"
            ) from err
        p = comp.coef_p.shape[0]
        D = cxp.asarray(col_scale, dtype=be.cdtype, device=_array.device(comp.coef_q))[None, :]
        core = cxp.concat(
            [
                cxp.concat([xpx.create_diagonal(held, xp=cxp), comp.coef_q * D], axis=1),
                cxp.concat([be.zeros((p, r)), comp.coef_p * D], axis=1),
            ],
            axis=0,
        )
    else:  # a first batch of one row, or nothing new
        comp, core = None, xpx.create_diagonal(held, xp=cxp)
    if core.shape[0]:
        Uc, s, _ = _linalg.small_svd(core, cxp)
    else:
        Uc, s = be.zeros((0, 0)), be.zeros((0,))
    Uq = Uc[:, : min(k, s.shape[0])]
    if comp is None:
        return be.matmul(V0, be.from_core(Uq)), s
    Z = cxp.concat([Uq[:r, :] + comp.zp[:r, :] @ Uq[r:, :], comp.zp[r:, :] @ Uq[r:, :]], axis=0)
    return be.matmul(comp.tall, be.from_core(Z)), s


def _r_factor(M: Any, xp: Any) -> Any:
    """The R factor of a tall ``M`` (m x d, m >= d). NumPy, CuPy and PyTorch compute it without
    forming Q (LAPACK geqrf only, a third of a full QR's work); other namespaces through the
    standard's reduced QR."""
    if array_api_compat.is_numpy_namespace(xp):
        return np.linalg.qr(M, mode="r")
    if array_api_compat.is_cupy_namespace(xp):
        import cupy

        return cupy.linalg.qr(M, mode="r")
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return torch.linalg.qr(M, mode="r").R
    return xp.linalg.qr(M).R


def _dense_update(state: PCAState | None, B: Any, rho: float, be: _backend.Backend, xp: Any) -> tuple[Any, Any]:
    """(right singular vectors, singular values) of scikit-learn's stacked matrix
    ``[sqrt(rho) diag(S) V^T; B]`` (at least as many rows as the d features): its d x d R
    factor, then the SVD of R in the core dtype. The left (sample-side) factor that
    scikit-learn's SVD also forms is never computed."""
    M = B if state is None else xp.concat(
        [(math.sqrt(rho) * state.singular_values)[:, None] * state.components.T, B], axis=0
    )
    _, s, Vh = _linalg.small_svd(be.to_core(_r_factor(M, xp)), be.cxp)
    return be.from_core(Vh.T), s


def _n_components_for(n_components: int | None, state: PCAState | None, n: int, d: int) -> int:
    """scikit-learn's ``n_components_`` for a batch of n rows and d features (its errors too).

    In ``fit`` too, a first batch with fewer rows than ``n_components`` is refused: scikit-learn's
    fit fails on the second batch then, or returns fewer components than ``n_components_`` when
    there is no second batch.
    """
    if n_components is None:
        k = min(n, d) if state is None else state.components.shape[1]
    elif n_components > d:
        raise ValueError(
            f"n_components={n_components!r} invalid for n_features={d}, need more rows than columns "
            "for StreamingPCA processing"
        )
    elif state is None and n_components > n:
        raise ValueError(
            f"n_components={n_components} must be less or equal to the batch number of samples {n} "
            "for the first partial_fit call."
        )
    else:
        k = n_components
    if state is not None and state.components.shape[1] != k:
        raise ValueError(
            f"n_components has changed from {state.components.shape[1]} to {k} between calls to "
            "partial_fit; set it to a fixed value, or call fit to start over"
        )
    return k


def _batches(n: int, batch_size: int, min_batch_size: int) -> list[slice]:
    """scikit-learn's ``gen_batches``: a short last batch is merged into the one before it
    when it would have fewer than ``min_batch_size`` rows."""
    out, start = [], 0
    for _ in range(n // batch_size):
        end = start + batch_size
        if end + min_batch_size > n:
            continue
        out.append(slice(start, end))
        start = end
    if start < n:
        out.append(slice(start, n))
    return out


# --------------------------------------------------------------------------------------------
# input validation (scikit-learn's rules and messages, on every namespace)
# --------------------------------------------------------------------------------------------
class NamespaceMismatchError(TypeError, ValueError):
    """Input from another array namespace than the fitted state's.

    A TypeError, as everywhere in the library, and a ValueError, which is what scikit-learn's
    array-API estimators raise (``check_same_namespace``).
    """


def _is_native(X: Any) -> bool:
    """An array of an array-API namespace other than NumPy: validated here, never converted."""
    return _array.is_array(X) and not isinstance(X, np.ndarray)


def _floating(X: Any, xp: Any, name: str) -> Any:
    """Floating input as is; integer and boolean input converted to the default float (float64
    where the device has it), as scikit-learn converts; anything else refused."""
    dt = X.dtype
    if dt in (xp.float32, xp.float64):
        return X
    if dt in (getattr(xp, "complex64", None), getattr(xp, "complex128", None)):
        raise ValueError(f"Complex data not supported: `{name}` has dtype {dt}")
    integral = [
        getattr(xp, t)
        for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")
        if hasattr(xp, t)
    ]
    if dt not in integral:
        raise TypeError(f"`{name}` must have a real numeric dtype, got {dt}")
    return xp.astype(X, _array.core_dtype(xp, _array.device(X)))


def _check_native(X: Any, name: str, owner: str, *, lazy_ok: bool = True) -> tuple[Any, Any]:
    """Validate an array-API array as scikit-learn's ``check_array`` would (2-D, at least one
    sample and one feature, finite, floating), with scikit-learn's error types and messages."""
    xp = _array.namespace((name, X))
    shape = tuple(X.shape)
    if X.ndim != 2:
        if X.ndim == 1:
            raise ValueError(
                f"Expected 2D array, got 1D array instead (`{name}` of shape {shape}). Reshape your data "
                "either using X.reshape(-1, 1) if your data has a single feature or X.reshape(1, -1) if it "
                "contains a single sample."
            )
        raise ValueError(f"Found array with dim {X.ndim}. {owner} expected <= 2 (`{name}` of shape {shape}).")
    if shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={shape}) while a minimum of 1 is required by {owner}.")
    if shape[1] == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={shape}) while a minimum of 1 is required by {owner}.")
    X = _floating(X, xp, name)
    # A lazy array is checked on the small cores instead (see _update): a pass of its own over
    # a distributed batch would cost as much as the update.
    if not _array.is_lazy(xp) and not bool(xp.all(xp.isfinite(X))):
        if bool(xp.any(xp.isnan(X))):
            raise ValueError(f"Input {name} contains NaN.")
        raise ValueError(f"Input {name} contains infinity or a value too large for {X.dtype}.")
    return xp, X


def _to_numpy_input(X: Any, name: str) -> Any:
    """Without scikit-learn: containers (lists, tuples) become NumPy arrays; sparse is refused."""
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"Sparse data was passed for {name}, but dense data is required; use X.toarray()")
    try:
        return np.asarray(X)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be an array or an array-like of numbers: {err}") from err


# --------------------------------------------------------------------------------------------
# base classes: scikit-learn's when installed, a minimal stand-in otherwise
# --------------------------------------------------------------------------------------------
if not _SKLEARN:  # pragma: no cover - exercised by the no-scikit-learn subprocess test

    class NotFittedError(ValueError, AttributeError):
        """Raised when a method needs a fitted estimator (scikit-learn's exception when installed)."""

    class _MiniEstimator:
        """get_params / set_params / fit_transform / repr without scikit-learn."""

        _PARAMS: tuple[str, ...] = ()

        def get_params(self, deep: bool = True) -> dict[str, Any]:
            return {name: getattr(self, name) for name in self._PARAMS}

        def set_params(self, **params: Any) -> Any:
            for name, value in params.items():
                if name not in self._PARAMS:
                    raise ValueError(
                        f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                        f"Valid parameters are: {sorted(self._PARAMS)!r}."
                    )
                setattr(self, name, value)
            return self

        def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
            return self.fit(X, y, **fit_params).transform(X)

        def __repr__(self) -> str:
            defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
            changed = [f"{k}={v!r}" for k, v in sorted(self.get_params().items()) if defaults.get(k) != v]
            return f"{type(self).__name__}({', '.join(changed)})"

    _BASES: tuple[type, ...] = (_MiniEstimator,)
else:
    _BASES = (_SkNames, _SkTransformer, _SkBase)


# --------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------
class StreamingPCA(*_BASES):
    r"""Incremental PCA by Brand updates, with optional forgetting, on any array-API backend.

    Parameters
    ----------
    n_components : int or None, optional
        Number of components ``k`` to keep. ``None`` (default): ``min(n_samples, n_features)`` of
        the first batch. Must not exceed the number of features, nor the rows of the first batch.
    decay : float or None, optional
        Forgetting factor ``rho`` in (0, 1): each new batch multiplies the weight of everything
        seen before by ``rho`` (see Notes). ``None`` (default): no forgetting, the estimator of
        scikit-learn's ``IncrementalPCA``.
    whiten : bool, optional
        Divide the projections by ``sqrt(explained_variance_)`` in :meth:`transform` (and
        multiply back in :meth:`inverse_transform`). Default False.
    batch_size : int or None, optional
        Rows per batch in :meth:`fit`; ``None`` (default): ``5 * n_features``, as scikit-learn.
    copy : bool, optional
        Accepted for scikit-learn compatibility; the input is never written to, so no copy is
        ever needed. Default True.
    verbose : bool, optional
        Show a progress bar over the batches of :meth:`fit` (tqdm when installed, a line per
        batch on stderr otherwise). Default False.

    Attributes
    ----------
    components_ : array, shape (n_components, n_features)
        Principal axes, rows orthonormal, by decreasing ``explained_variance_``; the
        largest-magnitude entry of each row is positive. A view of the tall ``(n_features,
        n_components)`` factor the updates hold (on Dask: a lazy transpose of the factor kept
        on the workers).
    explained_variance_ : array, shape (n_components,)
        Variance along each component: ``sigma_i^2 / (n_samples_seen_ - 1)``.
    explained_variance_ratio_ : array, shape (n_components,)
        ``sigma_i^2`` over the total (weighted) scatter ``sum(var_) * n_samples_seen_``.
    singular_values_ : array, shape (n_components,)
        ``sigma_i``: the singular values of the (weighted) centred data, as truncated along
        the stream.
    mean_ : array, shape (n_features,)
        Per-feature (weighted) mean.
    var_ : array, shape (n_features,)
        Per-feature (weighted) variance, normalised by ``n_samples_seen_`` (ddof 0).
    noise_variance_ : float
        scikit-learn's estimate: the mean of the variances the last update discarded, over the
        ``min(n_components + n_b + 1, n_features) - n_components`` singular values a stacked SVD
        would have had (``min(n_b, n_features) - n_components`` on the first batch); 0 when
        ``n_components_`` equals the last batch's rows ``n_b`` or the number of features.
    n_components_ : int
        The number of components kept.
    n_samples_seen_ : int or float
        Samples seen; with ``decay``, their total weight ``N_t`` (a float, see Notes).
    n_features_in_ : int
        Features seen in the first batch.
    feature_names_in_ : ndarray of str
        Column names of a DataFrame passed to :meth:`fit` (scikit-learn's convention).
    batch_size_ : int
        The batch size :meth:`fit` used.

    Raises
    ------
    ValueError
        On bad input (1-D, empty, NaN or infinity, a different number of features than the
        first batch, ``n_components`` above the number of features or the first batch's rows,
        parameters out of range), with scikit-learn's messages; also
        ``sklearn.exceptions.NotFittedError`` (a ValueError) from the transforms before fit.
    TypeError
        On sparse, complex or non-numeric input, parameters of the wrong type, or an array from
        another namespace than the fitted state's.
    DecompositionError
        When the updated spectrum overflows (float32 data of extreme magnitude).

    Notes
    -----
    **Without decay** the estimator is scikit-learn's ``IncrementalPCA`` on the same batches
    (Ross et al. 2008): after each batch ``X_b`` (``n_b`` rows, mean ``m_b``) of a stream with
    ``N`` samples seen so far, mean ``mu`` and held components ``V`` (d x k) with singular
    values ``S``, the new components are the top-k right singular vectors of the matrix
    scikit-learn stacks,

    .. math:: M = \begin{bmatrix} \operatorname{diag}(S)\, V^T \\ X_b - \mathbf 1 m_b^T \\
              \sqrt{N n_b / (N + n_b)}\; (\mu - m_b)^T \end{bmatrix},

    truncated to k after every batch exactly as scikit-learn truncates. Here ``M`` is never
    formed: ``M^T M`` equals ``S^2`` on span(V) plus the Gram matrix of the shifted batch
    ``B = X_b - 1 a^T``, ``a = m_b + sqrt(N / (N + n_b)) (mu - m_b)``, which holds the mean
    correction with no extra row; a Brand update of ``(V, S)`` with ``B^T`` gives the top-k
    singular triplets of ``M`` to rounding (one complement on the feature side, an SVD of the
    ``(k + p) x (k + n_b)`` core, ``p <= n_b``; see ``_update``). The sign convention is
    scikit-learn's ``svd_flip(u_based_decision=False)``.

    **With decay** ``rho``, the samples of batch ``s`` weigh ``rho^(t - s)`` after batch ``t``:

    .. math:: N_t = \rho N_{t-1} + n_t, \qquad
              \mu_t = \mu_{t-1} + \frac{n_t}{N_t} (m_t - \mu_{t-1}),

    .. math:: S_t = \rho S_{t-1} + X_{c,t}^T X_{c,t}
              + \frac{\rho N_{t-1} n_t}{N_t} (\mu_{t-1} - m_t)(\mu_{t-1} - m_t)^T,

    with ``S_t = sum_i w_i (x_i - mu_t)(x_i - mu_t)^T`` the weighted scatter matrix,
    ``X_{c,t}`` the batch centred on its mean ``m_t``. ``n_samples_seen_`` is ``N_t`` (a
    float), ``mean_`` is ``mu_t``, ``var_`` is ``diag(S_t) / N_t``. The held components are
    the top-k eigenvectors of ``S_t`` as truncated along the stream (the recursion above with
    ``S_{t-1}`` replaced by its held rank-k part, i.e. scikit-learn's stacked matrix with
    ``diag(S)`` scaled by ``sqrt(rho)``); ``explained_variance_`` is ``sigma_i^2 / (N_t - 1)``
    (the eigenvalues of the weighted covariance ``S_t / (N_t - 1)``, scikit-learn's unbiased
    normalisation with ``N_t`` for the count), ``explained_variance_ratio_`` is
    ``sigma_i^2 / trace(S_t)`` and ``noise_variance_`` is defined as without decay with
    ``N_t``. With ``n_components = n_features`` (no truncation) the covariance of
    :meth:`get_covariance` is exactly ``S_t / (N_t - 1)``. The weight of the past saturates at
    ``n_b / (1 - rho)`` samples: ``rho = 1 - n_b / W`` remembers about the last ``W`` samples.

    Cost per batch: ``O(d (k + n_b)^2)`` flops in a few large GEMMs (``k^T B``, the residual,
    its Gram matrix, one re-projection when the batch lies mostly in the held span, and the
    rotation to k columns) plus an ``O((k + n_b)^3)`` core SVD in float64; memory
    ``O(d (k + n_b))``, no ``d x d`` matrix (except in :meth:`get_covariance` /
    :meth:`get_precision`, which return one). :meth:`score_samples` uses the low-rank form of
    the precision, ``O(n d k)``.

    The first batch fixes the namespace and device; later batches of another float dtype are
    cast to the held one. On Dask, ``X`` is a ``dask.array`` with the feature dimension chunked
    (samples are merged into one chunk per batch): the tall factor, the mean and the variance
    stay chunked on the workers, only ``(k + n_b)``-sized cores reach the client, and NaN or
    infinity in ``X`` is found on those cores.

    A ``partial_fit`` that raises (bad input, a failed decomposition) leaves the fitted state
    as it was; so does a ``fit`` that raises.

    References
    ----------
    .. [1] D. Ross, J. Lim, R.-S. Lin, M.-H. Yang, "Incremental learning for robust visual
       tracking", IJCV 77 (2008).
    .. [2] M. Brand, "Fast low-rank modifications of the thin singular value decomposition",
       Linear Algebra Appl. 415 (2006).
    .. [3] C. O. Puiu, "Brand New K-FACs", arXiv:2210.08494, Alg. 2.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import StreamingPCA
    >>> X = xp.asarray([[-1.0, -1.0], [-2.0, -1.0], [-3.0, -2.0], [1.0, 1.0], [2.0, 1.0], [3.0, 2.0]])
    >>> pca = StreamingPCA(n_components=1, batch_size=3).fit(X)   # two batches of 3 rows
    >>> pca.components_                                           # scikit-learn's IncrementalPCA's
    Array([[0.83864534, 0.54467787]], dtype=array_api_strict.float64)
    >>> pca.transform(X[:2, :])
    Array([[-1.38332322],
           [-2.22196856]], dtype=array_api_strict.float64)
    >>> pca.n_samples_seen_
    6
    >>> forgetful = StreamingPCA(n_components=1, decay=0.5, batch_size=3).fit(X)
    >>> forgetful.n_samples_seen_                                 # 0.5 * 3 + 3
    4.5
    >>> forgetful.mean_                                           # (0.5 * 3 * m_1 + 3 * m_2) / 4.5
    Array([0.66666667, 0.44444444], dtype=array_api_strict.float64)
    """

    _PARAMS = ("n_components", "decay", "whiten", "batch_size", "copy", "verbose")

    def __init__(
        self,
        n_components: int | None = None,
        *,
        decay: float | None = None,
        whiten: bool = False,
        batch_size: int | None = None,
        copy: bool = True,
        verbose: bool = False,
    ) -> None:
        # scikit-learn's convention: store the parameters as given, validate them in fit.
        self.n_components = n_components
        self.decay = decay
        self.whiten = whiten
        self.batch_size = batch_size
        self.copy = copy
        self.verbose = verbose
        self._state: PCAState | None = None

    # ---------------------------------------------------------------- fitted attributes
    def _fitted(self) -> PCAState:
        if self._state is None:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' or 'partial_fit' "
                "with appropriate arguments before using this estimator."
            )
        return self._state

    def _attr(self, name: str) -> PCAState:
        if self._state is None:  # AttributeError: hasattr() is False before fit, as in scikit-learn
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r} (not fitted yet)")
        return self._state

    def __sklearn_is_fitted__(self) -> bool:
        return self._state is not None

    @property
    def components_(self) -> Any:
        return self._attr("components_").components.T

    @property
    def singular_values_(self) -> Any:
        return self._attr("singular_values_").singular_values

    @property
    def explained_variance_(self) -> Any:
        return self._attr("explained_variance_").explained_variance

    @property
    def explained_variance_ratio_(self) -> Any:
        return self._attr("explained_variance_ratio_").explained_variance_ratio

    @property
    def mean_(self) -> Any:
        return self._attr("mean_").mean

    @property
    def var_(self) -> Any:
        return self._attr("var_").var

    @property
    def noise_variance_(self) -> float:
        return self._attr("noise_variance_").noise_variance

    @property
    def n_components_(self) -> int:
        return int(self._attr("n_components_").components.shape[1])

    @property
    def n_samples_seen_(self) -> int | float:
        return self._attr("n_samples_seen_").n_samples_seen

    @property
    def batch_size_(self) -> int:
        size = self._attr("batch_size_").batch_size
        if size is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute 'batch_size_' (set by fit only)")
        return size

    @property
    def _n_features_out(self) -> int:  # scikit-learn's get_feature_names_out: pca0, pca1, ...
        return self.n_components_

    # ---------------------------------------------------------------- validation
    def _check_params(self) -> tuple[int | None, float | None, int | None]:
        n_components = _validate.check_int(self.n_components, "n_components", minimum=1, allow_none=True)
        decay = None
        if self.decay is not None:
            decay = _validate.check_real(self.decay, "decay", low=0.0, high=1.0, low_open=True, high_open=True)
        batch_size = _validate.check_int(self.batch_size, "batch_size", minimum=1, allow_none=True)
        for name in ("whiten", "copy", "verbose"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}")
        return n_components, decay, batch_size

    def _validate(self, X: Any, *, reset: bool, name: str = "X", check_features: bool = True) -> tuple[Any, Any]:
        """(namespace, validated X). NumPy input and containers go through scikit-learn's
        ``validate_data`` when it is installed (feature names, its messages); arrays of the
        other namespaces are validated natively and never converted."""
        owner = type(self).__name__
        if _SKLEARN and not _is_native(X):
            if check_features:
                X = _sk_validate_data(self, X, dtype=[np.float64, np.float32], copy=False, reset=reset)
            else:
                X = _sk_check_array(X, input_name=name, dtype=[np.float64, np.float32])
            return _array.namespace((name, X)), X
        if not _array.is_array(X):
            X = _to_numpy_input(X, name)
        xp, X = _check_native(X, name, owner)
        if check_features:
            d = int(X.shape[1])
            if reset:
                self.n_features_in_ = d
                self.__dict__.pop("feature_names_in_", None)
            elif hasattr(self, "n_features_in_") and d != self.n_features_in_:
                raise ValueError(
                    f"X has {d} features, but {owner} is expecting {self.n_features_in_} features as input."
                )
        return xp, X

    def _against_state(self, X: Any, state: PCAState, method: str, name: str = "X") -> None:
        """X in the fitted state's namespace and on its device."""
        try:
            _array.namespace((name, X), ("components_", state.components))
        except TypeError as err:
            raise NamespaceMismatchError(
                f"{type(self).__name__}.{method}(): `{name}` must use the same namespace as the arrays the "
                f"estimator was fitted on ({err})"
            ) from err
        _array.same_device((name, X), ("components_", state.components))

    @contextlib.contextmanager
    def _restored_on_error(self) -> Iterator[None]:
        """Validation with reset rewrites n_features_in_ / feature_names_in_ before the update
        runs: put them back if anything raises, so that a refused call changes nothing."""
        saved = {k: self.__dict__[k] for k in ("n_features_in_", "feature_names_in_") if k in self.__dict__}
        try:
            yield
        except BaseException:
            for k in ("n_features_in_", "feature_names_in_"):
                self.__dict__.pop(k, None)
            self.__dict__.update(saved)
            raise

    # ---------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any = None) -> StreamingPCA:
        """Fit on ``X`` (n_samples x n_features) in batches of ``batch_size`` rows, from scratch.

        Parameters
        ----------
        X : array, shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self
        """
        n_components, decay, batch_size = self._check_params()
        with self._restored_on_error():
            xp, X = self._validate(X, reset=True)
            n, d = X.shape
            size = 5 * d if batch_size is None else batch_size
            slices = _batches(int(n), size, n_components or 0)
            state = None
            for sl in self._progress(slices):
                Xb = self._batch(X[sl, :], xp, state)
                k = _n_components_for(n_components, state, int(Xb.shape[0]), int(d))
                state = _update(state, Xb, k, decay, xp)
            self._state = state._replace(batch_size=size)
        return self

    def partial_fit(self, X: Any, y: Any = None, check_input: bool = True) -> StreamingPCA:
        """Update the fit with one batch ``X`` (n_samples x n_features).

        Parameters
        ----------
        X : array, shape (n_samples, n_features)
        y : ignored
        check_input : bool, optional
            Validate ``X`` (default True). With False, ``X`` must already be a finite floating
            2-D array of the fitted namespace, device and number of features.

        Returns
        -------
        self
        """
        n_components, decay, _ = self._check_params()
        first = self._state is None
        with self._restored_on_error():
            if check_input:
                xp, X = self._validate(X, reset=first)
            else:
                xp = _array.namespace(("X", X))
            X = self._batch(X, xp, self._state)
            n, d = X.shape
            k = _n_components_for(n_components, self._state, int(n), int(d))
            new = _update(self._state, X, k, decay, xp)
        self._state = new
        return self

    def _batch(self, X: Any, xp: Any, state: PCAState | None) -> Any:
        """A batch in the held namespace, device and dtype, its samples in one chunk (Dask)."""
        if state is not None:
            self._against_state(X, state, "partial_fit")
            X = _array.astype(X, state.components.dtype, xp)
        return _array.one_chunk(X, 0, xp)

    def _progress(self, slices: list[slice]) -> Any:
        if not self.verbose:
            return slices
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return self._plain_progress(slices)
        return tqdm(slices, desc=f"{type(self).__name__}.fit", unit="batch")

    def _plain_progress(self, slices: list[slice]) -> Iterator[slice]:
        for i, sl in enumerate(slices, 1):
            yield sl
            print(f"{type(self).__name__}.fit: batch {i}/{len(slices)}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- transforms
    def _prepared(self, X: Any, method: str) -> tuple[Any, Any, PCAState]:
        state = self._fitted()
        xp, X = self._validate(X, reset=False)
        self._against_state(X, state, method)
        return xp, X, state

    def transform(self, X: Any) -> Any:
        """Project ``X`` (n_samples x n_features) on the components: ``(X - mean_) @ components_.T``,
        divided by ``sqrt(explained_variance_)`` with ``whiten``; shape ``(n_samples, n_components_)``."""
        xp, X, state = self._prepared(X, "transform")
        V, mean = state.components, state.mean
        dt = _array.result_dtype(xp, X, V)
        V, mean, X = (_array.astype(a, dt, xp) for a in (V, mean, X))
        out = X @ V - (mean[None, :] @ V)
        if self.whiten:
            out = out / self._whitening_scale(xp, state, dt)[None, :]
        return out

    @staticmethod
    def _whitening_scale(xp: Any, state: PCAState, dt: Any) -> Any:
        scale = xp.sqrt(_array.astype(state.explained_variance, dt, xp))
        tiny = float(xp.finfo(dt).eps)
        return xp.where(scale < tiny, xp.asarray(tiny, dtype=dt, device=_array.device(scale)), scale)

    def inverse_transform(self, X: Any) -> Any:
        """Map projections ``X`` (``n_samples x n_components_``) back to feature space:
        ``X @ components_ + mean_`` (undoing the whitening with ``whiten``)."""
        state = self._fitted()
        xp, X = self._validate(X, reset=False, check_features=False)
        self._against_state(X, state, "inverse_transform")
        k = state.components.shape[1]
        if X.shape[1] != k:
            raise ValueError(f"X has {X.shape[1]} columns, but {type(self).__name__} has {k} components")
        dt = _array.result_dtype(xp, X, state.components)
        V, mean, X = (_array.astype(a, dt, xp) for a in (state.components, state.mean, X))
        if self.whiten:
            X = X * xp.sqrt(_array.astype(state.explained_variance, dt, xp))[None, :]
        return X @ V.T + mean[None, :]

    # ---------------------------------------------------------------- the generative model
    def _model(self, xp: Any) -> tuple[Any, Any, float]:
        """(V, e, sigma^2) with the model covariance ``V diag(e) V^T + sigma^2 I``.

        scikit-learn's: ``e = max(explained_variance_ - sigma^2, 0)``, and with ``whiten`` its
        components are scaled by ``sqrt(explained_variance_)`` first, i.e. ``e`` is multiplied
        by ``explained_variance_`` (reproduced as it is).
        """
        state = self._fitted()
        ev = state.explained_variance
        noise = float(state.noise_variance)
        e = xp.clip(ev - noise, min=0.0)
        if self.whiten:
            e = e * ev
        return state.components, e, noise

    def get_covariance(self) -> Any:
        """Model covariance ``components_.T @ diag(e) @ components_ + noise_variance_ * I``
        (d x d; scikit-learn's definition, see ``_model``)."""
        state = self._fitted()
        xp = _array.namespace(("components_", state.components))
        V, e, noise = self._model(xp)
        d = V.shape[0]
        eye = xp.eye(d, dtype=V.dtype, device=_array.device(V))
        return (V * e[None, :]) @ V.T + noise * eye

    def get_precision(self) -> Any:
        """Inverse of :meth:`get_covariance` (d x d), by the matrix inversion lemma:
        ``(I - V diag(e / (e + s)) V^T) / s`` with ``s = noise_variance_``; a dense inverse
        when ``s = 0``, as scikit-learn."""
        state = self._fitted()
        xp = _array.namespace(("components_", state.components))
        V, e, noise = self._model(xp)
        if noise == 0.0:
            return xp.linalg.inv(self.get_covariance())
        d = V.shape[0]
        eye = xp.eye(d, dtype=V.dtype, device=_array.device(V))
        return (eye - (V * (e / (e + noise))[None, :]) @ V.T) / noise

    def score_samples(self, X: Any) -> Any:
        """Log-likelihood of each sample under the probabilistic PCA model (Tipping & Bishop),
        shape (n_samples,); in ``O(n d k)`` through the low-rank precision.

        With ``noise_variance_ = 0`` the model is singular unless every feature is a component
        with positive variance (``n_components_ = n_features``, where it is the sample
        covariance): every sample then scores ``-inf`` (scikit-learn's dense inverse would raise
        or return noise).
        """
        xp, X, state = self._prepared(X, "score_samples")
        V, e, noise = self._model(xp)
        dt = _array.result_dtype(xp, X, V)
        V, e, mean, X = (_array.astype(a, dt, xp) for a in (V, e, state.mean, X))
        n, d = X.shape
        Xr = X - mean[None, :]
        proj = Xr @ V
        if noise == 0.0:
            if V.shape[1] < d or not bool(xp.all(e > 0)):
                return xp.full((n,), -math.inf, dtype=dt, device=_array.device(X))
            quad = xp.sum(proj * proj / e[None, :], axis=1)
            logdet_cov = float(xp.sum(xp.log(e)))
        else:
            # The residual is formed explicitly: |x|^2 - |V^T x|^2 would cancel when the data
            # lies mostly in the span of the components.
            resid = Xr - proj @ V.T
            quad = xp.sum(resid * resid, axis=1) / noise + xp.sum(proj * proj / (e + noise)[None, :], axis=1)
            logdet_cov = float(xp.sum(xp.log(e + noise))) + (d - V.shape[1]) * math.log(noise)
        return -0.5 * quad - 0.5 * (d * math.log(2.0 * math.pi) + logdet_cov)

    def score(self, X: Any, y: Any = None) -> float:
        """Average log-likelihood of the samples of ``X`` (a Python float)."""
        ll = self.score_samples(X)
        xp = _array.namespace(("X", ll))
        return float(xp.mean(ll))

    # ---------------------------------------------------------------- scikit-learn tags
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        # Every method runs natively on the input's namespace (scikit-learn's array API checks
        # pass with PyTorch and array-api-strict inputs).
        tags.array_api_support = True
        return tags

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Parameters and fitted state as arrays (in the fitted namespace) and numbers; with
        :func:`~lowrank_online.save_state` a plain ``.npz`` (no pickle). :meth:`from_state_dict`
        rebuilds the estimator bit-exactly, and a stream resumed from it continues exactly as
        the uninterrupted one."""
        out: dict[str, Any] = {"params": dict(self.get_params(deep=False))}
        if "n_features_in_" in self.__dict__:
            out["n_features_in"] = int(self.n_features_in_)
        if "feature_names_in_" in self.__dict__:
            out["feature_names_in"] = np.asarray([str(c) for c in self.feature_names_in_])
        s = self._state
        if s is not None:
            out["state"] = {
                "components": s.components,
                "singular_values": s.singular_values,
                "mean": s.mean,
                "var": s.var,
                "explained_variance": s.explained_variance,
                "explained_variance_ratio": s.explained_variance_ratio,
                "noise_variance": float(s.noise_variance),
                "n_samples_seen": s.n_samples_seen,
                "n_batches": int(s.n_batches),
                "batch_size": s.batch_size,
            }
        return out

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], *, xp: Any = None, device: Any = None, chunks: Any = None
    ) -> StreamingPCA:
        """Rebuild an estimator from :meth:`state_dict` (or its NumPy copy from
        :func:`~lowrank_online.load_state`).

        ``xp`` / ``device`` move the arrays to another namespace or device (default: as they
        are). ``chunks`` (Dask ``xp`` only): the row chunks of the restored tall factor (best
        the feature chunks of the batches to come).
        """
        if "params" not in state:
            raise ValueError("`state` lacks the entry 'params'")
        params = {k: state["params"].get(k) for k in cls._PARAMS}
        for k, default in (("whiten", False), ("copy", True), ("verbose", False)):
            params[k] = bool(params[k]) if params[k] is not None else default
        est = cls(**params)
        if "n_features_in" in state:
            est.n_features_in_ = int(state["n_features_in"])
        if "feature_names_in" in state:
            est.feature_names_in_ = np.asarray(list(state["feature_names_in"]), dtype=object)
        fitted = state.get("state")
        if fitted is None:
            return est
        missing = {"components", "singular_values", "mean", "var", "explained_variance",
                   "explained_variance_ratio", "noise_variance", "n_samples_seen", "n_batches"} - set(fitted)
        if missing:
            raise ValueError(f"`state['state']` lacks the entries {sorted(missing)}")
        arrays = {}
        for key in ("components", "singular_values", "mean", "var", "explained_variance", "explained_variance_ratio"):
            value = fitted[key]
            if xp is not None:
                value = _array.from_host(
                    _array.to_numpy(value), xp, device, rows=chunks if key == "components" else None
                )
            arrays[key] = value
        ns = _array.namespace(*((f"state['state'][{k!r}]", v) for k, v in arrays.items()))
        V = arrays["components"]
        _validate.check_array(V, "state['state']['components']", ns, ndim=2)
        k, d = V.shape[1], V.shape[0]
        for key, size in (("singular_values", k), ("explained_variance", k), ("explained_variance_ratio", k),
                          ("mean", d), ("var", d)):
            _validate.check_array(arrays[key], f"state['state'][{key!r}]", ns, ndim=1)
            if arrays[key].shape[0] != size:
                raise ValueError(f"`state['state'][{key!r}]` has {arrays[key].shape[0]} entries, expected {size}")
        seen = fitted["n_samples_seen"]
        seen = int(seen) if isinstance(seen, numbers.Integral) else float(seen)
        batch = fitted.get("batch_size")
        est._state = PCAState(
            components=V,
            singular_values=arrays["singular_values"],
            mean=arrays["mean"],
            var=arrays["var"],
            n_samples_seen=seen,
            explained_variance=arrays["explained_variance"],
            explained_variance_ratio=arrays["explained_variance_ratio"],
            noise_variance=float(fitted["noise_variance"]),
            n_batches=int(fitted["n_batches"]),
            batch_size=None if batch is None else int(batch),
        )
        return est
