"""Local intrinsic dimensionality (LID) detector (Ma et al. 2018), without the test leak."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from .._batching import chunks
from .._validation import POSITIVE, POSITIVE_INT, check_param, integer, param_error, satisfies
from .base import Detector, as_torch

__all__ = ["LIDDetector", "lid_mle", "lid_mle_torch", "check_layer_sizes", "match_rows"]


def check_layer_sizes(layer_sizes: Sequence[int] | None, n_features: int, owner: str) -> list[slice]:
    """Column slices of the layer blocks; ``None`` = one block of all ``n_features`` columns."""
    if layer_sizes is None:
        return [slice(0, n_features)]
    sizes = list(layer_sizes) if isinstance(layer_sizes, Sequence | np.ndarray) else []
    if not sizes or not all(satisfies(s, POSITIVE_INT) for s in sizes):
        raise param_error(owner, "layer_sizes", layer_sizes,
                          "None or a non-empty sequence of ints >= 1 (the widths of the layer blocks of X)",
                          "Pass e.g. tuple(fisherscope.features.layer_sizes(...).values()).")
    if sum(sizes) != n_features:
        raise ValueError(
            f"{owner}: layer_sizes {tuple(int(s) for s in sizes)} add up to {sum(sizes)}, but X has "
            f"{n_features} layer feature columns; pass the widths of the blocks of X."
        )
    edges = np.cumsum([0, *sizes])
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def match_rows(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each query row, the index of a bitwise-identical reference row, else -1.

    Vectorised (``np.unique`` on the rows' bytes); with duplicated reference rows one of
    them is returned.
    """
    q = np.ascontiguousarray(query, dtype=np.float64)
    r = np.ascontiguousarray(reference, dtype=np.float64)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query has {q.shape[1]} columns, reference {r.shape[1]}.")
    void = np.dtype((np.void, 8 * q.shape[1]))
    both = np.concatenate([r, q]).view(void).ravel()
    _, first, inverse = np.unique(both, return_index=True, return_inverse=True)
    # first[u] is the first occurrence of unique row u; it is a reference row iff < len(r)
    ref_of_unique = np.where(first < r.shape[0], first, -1)
    return ref_of_unique[inverse.ravel()[r.shape[0] :]]


def lid_mle(
    query: np.ndarray,
    reference: np.ndarray,
    k: int = 20,
    *,
    exclude: np.ndarray | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Maximum-likelihood LID of each query row among its k nearest reference rows.

    ``LID(x) = −( (1/k) Σ_{i=1..k} log(r_i(x) / r_k(x)) )⁻¹`` with r_1 ≤ ... ≤ r_k the
    Euclidean distances from x to its k nearest reference rows (Ma et al. 2018, eq. 3;
    the i = k term is 0, as in their code). Where the nearest remaining neighbour is at
    distance 0 (duplicates) the estimate is 0.

    Parameters
    ----------
    query : ndarray, shape (n, d)
    reference : ndarray, shape (m, d)
    k : int
        Number of neighbours, ``1 <= k <= m`` (``m − 1`` with ``exclude``).
    exclude : ndarray of int, shape (n,), optional
        Reference index to skip for each query row (-1: none): leave-one-out when the
        query rows are reference rows themselves.
    batch_size : int
        Most query rows per distance block (fewer where a block would exceed ~16M floats:
        memory ~ rows · max(m, k · d)).

    Returns
    -------
    ndarray, shape (n,)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ref = np.c_[rng.normal(size=(4000, 2)), np.zeros((4000, 8))]  # a 2-D plane in 10-D
    >>> round(float(lid_mle(ref[:200], ref, k=20, exclude=np.arange(200)).mean()), 0)
    2.0
    """
    q = np.asarray(query, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    m = r.shape[0]
    if exclude is None:
        exclude = np.full(q.shape[0], -1)
    exclude = np.asarray(exclude)
    loo = bool((exclude >= 0).any())
    check_param("lid_mle", "k", k, integer(ge=1, le=m - int(loo)).but(
        expected=f"an integer in [1, {m - int(loo)}] for a reference of {m} rows{' with leave-one-out' if loo else ''}",
        fix="Use a smaller k or more clean fitting rows."))
    r_sq = np.einsum("ij,ij->i", r, r)
    out = np.empty(q.shape[0])
    # rows per block: at most batch_size, and blocks of at most ~16M floats (128 MB)
    step = max(1, min(int(batch_size), 16_000_000 // max(m, k * q.shape[1], 1)))
    for sl in chunks(q.shape[0], step):
        qb = q[sl]
        d2 = np.einsum("ij,ij->i", qb, qb)[:, None] + r_sq[None, :] - 2.0 * (qb @ r.T)
        ex = exclude[sl]
        rows = np.flatnonzero(ex >= 0)
        d2[rows, ex[rows]] = np.inf
        idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
        # exact distances of the selected neighbours (no cancellation), sorted
        dist = np.sqrt(((qb[:, None, :] - r[idx]) ** 2).sum(-1))
        dist.sort(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_log = np.log(dist / dist[:, -1:]).mean(axis=1)
            lid = -1.0 / mean_log
        # nearest neighbour at distance 0: log 0 = -inf gives 0; all k at 0 gives nan -> 0
        lid[~np.isfinite(lid) | (dist[:, 0] == 0)] = 0.0
        out[sl] = lid
    return out


def lid_mle_torch(query: torch.Tensor, reference: torch.Tensor, k: int, *,
                  exclude: np.ndarray | None = None) -> torch.Tensor:
    """:func:`lid_mle` as a differentiable torch function of the query rows (float64).

    The k nearest reference rows are chosen on the detached squared distances (a
    constant of the graph, as any nearest-neighbour choice is); the distances to them,
    and so the estimate, carry the gradient. Zero nearest distances give 0, as in
    :func:`lid_mle` (here: squared distances below 64 ulp of ‖q‖² + ‖r‖², the round-off
    of the expansion they are computed from).

    Shapes
    ------
    query: (n, d), reference: (m, d) -> (n,).
    """
    q, r = query, reference
    q_sq, r_sq = (q ** 2).sum(1, keepdim=True), (r ** 2).sum(1)
    gram = q @ r.T  # (n, m), differentiable in q
    d2 = q_sq.detach() + r_sq[None] - 2.0 * gram.detach()
    if exclude is not None:
        ex = torch.as_tensor(np.asarray(exclude), device=q.device)
        rows = torch.nonzero(ex >= 0).flatten()
        d2[rows, ex[rows]] = torch.inf
    idx = torch.topk(d2, k, dim=1, largest=False).indices  # (n, k)
    # the k squared distances from the expansion ‖q‖² + ‖r‖² − 2 q·r, gathered from one matrix
    # product (no (n, k, d) differences: 20× faster at d = 3456, and equal to the differences to
    # ~1e-12 relative in float64); below the expansion's round-off a distance counts as 0
    norms = q_sq + r_sq[idx]
    sq = norms - 2.0 * gram.gather(1, idx)
    zero = sq.detach() <= 64 * torch.finfo(sq.dtype).eps * norms.detach()
    dist = torch.where(zero, torch.zeros_like(sq), sq.clamp_min(1e-300).sqrt())
    dist, _ = dist.sort(dim=1)
    last = dist[:, -1:]
    nearest_zero = dist.detach()[:, 0] == 0
    safe = torch.where(dist.detach() > 0, dist, torch.ones_like(dist))
    safe_last = torch.where(last.detach() > 0, last, torch.ones_like(last))
    mean_log = torch.log(safe / safe_last).mean(1)
    ok = ~nearest_zero & (mean_log.detach() < 0)
    return torch.where(ok, -1.0 / torch.where(ok, mean_log, -torch.ones_like(mean_log)), torch.zeros_like(mean_log))


class LIDDetector(Detector):
    """Local intrinsic dimensionality of each layer's activations -> logistic regression.

    Ma et al. (2018) estimate, for every sample and layer, the LID of the sample's
    activation among its k nearest neighbours, then train a logistic regression on the
    per-layer LIDs (clean and noisy negatives, adversarial positives). Their code draws
    the neighbours from the minibatch being scored, which mixes test samples (and their
    adversarial versions) into each other's estimates. Here the neighbours come from a
    fixed *reference*: the clean rows given to ``fit``. A clean fitting row is scored
    leave-one-out (it is never its own neighbour), and so is any later row bitwise
    identical to a reference row, so ``decision_function`` on the fitting rows returns
    the values the classifier was trained on. The per-layer LIDs are z-scored with a
    scaler fitted on the fitting rows only.

    Parameters
    ----------
    k : int
        Number of nearest neighbours (Ma et al.: 20).
    layer_sizes : sequence of int, optional
        Widths of the layer blocks of X, in column order
        (``tuple(fisherscope.features.layer_sizes(model, x, layers).values())``);
        ``None``: X is one layer.
    C : float
        Inverse L2 regularisation of the logistic regression.
    batch_size : int
        Query rows per distance block.
    target_fpr : float
        False-positive rate on clean rows at which ``predict`` thresholds.

    Attributes
    ----------
    reference_ : ndarray (n_clean, n_features)
        The clean fitting rows (the neighbour pool).
    scaler_ : StandardScaler
    classifier_ : LogisticRegression

    Shapes
    ------
    X: (n_samples, Σ layer_sizes) concatenated activations
    (:func:`fisherscope.features.layer_activations`) -> decision_function: (n_samples,),
    the logistic regression's log-odds of "adversarial".

    References
    ----------
    .. [1] X. Ma, B. Li, Y. Wang, S. M. Erfani, S. Wijewickrema, G. Schoenebeck, D. Song,
       M. E. Houle and J. Bailey, "Characterizing adversarial subspaces using local
       intrinsic dimensionality", ICLR 2018.
    .. [2] L. Amsaleg et al., "Estimating local intrinsic dimensionality", KDD 2015.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = np.c_[rng.normal(size=(300, 2)), np.zeros((300, 6))]  # a plane in 8-D
    >>> adv = clean[:100] + 0.3 * rng.normal(size=(100, 8))           # pushed off it
    >>> X, y = np.vstack([clean, adv]), np.r_[np.zeros(300), np.ones(100)]
    >>> LIDDetector(k=10).fit(X, y).score(X, y) > 0.95
    True
    """

    feature = "layer_activations"
    supervised = True

    def __init__(
        self,
        *,
        k: int = 20,
        layer_sizes: Sequence[int] | None = None,
        C: float = 1.0,
        batch_size: int = 256,
        target_fpr: float = 0.05,
    ) -> None:
        self.k = k
        self.layer_sizes = layer_sizes
        self.C = C
        self.batch_size = batch_size
        self.target_fpr = target_fpr

    def lid_features(self, X: np.ndarray) -> np.ndarray:
        """Per-layer LIDs of X's rows against the reference, shape (n_samples, n_layers)."""
        X = np.asarray(X, dtype=np.float64)
        exclude = match_rows(X, self.reference_)
        cols = [lid_mle(X[:, s], self.reference_[:, s], self.k, exclude=exclude,
                        batch_size=self.batch_size) for s in self.layers_]  # fmt: skip
        return np.stack(cols, axis=1)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        check_param("LIDDetector", "batch_size", self.batch_size, POSITIVE_INT)
        self.layers_ = check_layer_sizes(self.layer_sizes, X.shape[1], "LIDDetector")
        self.reference_ = X[y == 0].copy()
        n_clean = self.reference_.shape[0]
        check_param("LIDDetector", "k", self.k, integer(ge=1, le=n_clean - 1).but(
            expected=f"an integer in [1, n_clean - 1] = [1, {n_clean - 1}] (the clean fitting rows are the "
                     "neighbour pool, scored leave-one-out)",
            fix="Fit on more clean rows or lower k."))
        check_param("LIDDetector", "C", self.C, POSITIVE)
        lids = self.lid_features(X)
        self.scaler_ = StandardScaler().fit(lids)
        self.classifier_ = LogisticRegression(C=self.C, max_iter=1000)
        self.classifier_.fit(self.scaler_.transform(lids), y)
        self._fit_lids = lids  # reused by _clean_fit_scores, then dropped

    def _clean_fit_scores(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        lids = self.__dict__.pop("_fit_lids", None)
        if lids is None:  # pragma: no cover - fit always sets it
            return self._decision(X[y == 0])
        return self.classifier_.decision_function(self.scaler_.transform(lids[y == 0]))

    def _decision(self, X: np.ndarray) -> np.ndarray:
        return self.classifier_.decision_function(self.scaler_.transform(self.lid_features(X)))

    def lid_features_torch(self, X: torch.Tensor) -> torch.Tensor:
        """:meth:`lid_features` as a differentiable torch function (rows bitwise equal to a
        reference row are scored leave-one-out, as in :meth:`lid_features`)."""
        exclude = match_rows(X.detach().cpu().numpy(), self.reference_)
        ref = as_torch(self.reference_, X)
        cols = [lid_mle_torch(X[:, s], ref[:, s], self.k, exclude=exclude) for s in self.layers_]
        return torch.stack(cols, dim=1)

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        from .density import linear_head_torch

        return linear_head_torch(self.lid_features_torch(X), self.scaler_, self.classifier_)
