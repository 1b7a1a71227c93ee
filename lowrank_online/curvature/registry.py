"""The method registry: every curvature method's family, factor kinds and schedule, in one table.

This is the only module that interprets a method name. A method is one :class:`MethodSpec`
entry; its family (a module of pure functions under :mod:`.families`) reads only the entry's
fields, never the name. Adding a method is one entry here plus, for a new family, its module.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["METHODS", "MethodSpec", "lookup"]


class MethodSpec(NamedTuple):
    """Static description of one curvature method.

    ``family``
        ``"kfac"`` (two independently maintained K-factors), ``"ekfac"`` (their eigenbasis
        plus eigenvalue corrections), ``"pair"`` (two factors from another estimator), or
        ``"kronsum"`` (a two-term Kronecker sum).
    ``kinds``
        K-FAC family: how each factor's inverse representation is maintained, for (A, Gamma):
        ``"eigh"`` (dense EVD), ``"reigh"`` (randomized EVD), ``"brand"`` (B-updates) or
        ``"by-cost"`` (chosen per factor by the cost model of :func:`.factors.choose_kind`).
    ``period``
        The configuration field that sets how often the inverse is recomputed.
    ``refresh`` / ``correct``
        B-updates plus the RSVD overwrite of Alg. 5 (every ``T_rsvd``) / the light correction
        of Alg. 6-7 (every ``T_corct``).
    ``estimator``
        Pair and Kronecker-sum families: which statistic of the batch they average: the
        trace-restricted factors (``"trace-restricted"``), the nearest Kronecker product
        (``"nearest"``), two terms by :func:`~lowrank_online.kpsvd`'s ``"deflation"`` or
        ``"lanczos"``, or K-FAC plus its best correction (``"corrected"``).
    ``per_sample``
        EKFAC: scalings from per-sample second moments (True) or from the mini-batch gradient
        squared (False, EKFAC-ra).
    ``factored``
        Whether the step has the two-sided form that the linear-time application (paper 001,
        Alg. 8) needs.
    ``paper``
        Where the method comes from (documentation).
    """

    family: str
    kinds: tuple[str, str] = ("eigh", "eigh")
    period: str = "T_inv"
    refresh: bool = False
    correct: bool = False
    estimator: str = ""
    per_sample: bool = True
    factored: bool = True
    paper: str = ""

    @property
    def parts(self) -> tuple[str, ...]:
        """The independently computed decompositions of a layer (what
        :meth:`~lowrank_online.curvature.KFACPreconditioner.decompose` can compute on one process
        for the others): each K-factor of the K-FAC family (``"A"``, ``"G"``); EKFAC's eigenbasis
        with its scalings (``"eigenbasis"``); the whole state for the other families
        (``"state"``)."""
        return {"kfac": ("A", "G"), "ekfac": ("eigenbasis",)}.get(self.family, ("state",))

    @property
    def takes_gram(self) -> bool:
        """Whether every factor is dense (EVD or randomized EVD of the EA): the update then needs
        only each batch's ``x^T x / N``, a :class:`~lowrank_online.curvature.Gram`, not its rows
        (kfac, rkfac)."""
        return self.family == "kfac" and all(kind in ("eigh", "reigh") for kind in self.kinds)

    @property
    def takes_moments(self) -> bool:
        """Whether the method takes :class:`~lowrank_online.curvature.Gram` factors together with
        the batch's moments in its eigenbasis (EKFAC, EKFAC-ra): what its scalings need of the
        rows beyond their Gram matrices, summable over processes like them."""
        return self.family == "ekfac"

    @property
    def unpaired_rows(self) -> bool:
        """Whether each factor is kept from its own rows (the K-FAC family): the update depends
        on the batch's ``a`` and ``g`` only through ``a^T a`` and ``g^T g``, so either may be
        replaced by rows with the same Gram matrix (another count of rows). EKFAC and the pair
        and Kronecker-sum families pair each row of ``a`` with its row of ``g``."""
        return self.family == "kfac"

    @property
    def reads_batch_gradient(self) -> bool:
        """Whether the method's statistic is the batch gradient ``g^T a / N`` of the rows it is fed
        (EKFAC-ra), so that their scale must be the gradient's, not the factors'."""
        return self.family == "ekfac" and not self.per_sample


_REGISTRY: dict[str, MethodSpec] = {
    "kfac": MethodSpec("kfac", ("eigh", "eigh"), paper="001 Sec. 2.1 (Martens & Grosse 2015)"),
    "rkfac": MethodSpec("kfac", ("reigh", "reigh"), paper="001 Alg. 1"),
    "bkfac": MethodSpec("kfac", ("brand", "brand"), period="T_brand", paper="001 Alg. 4"),
    "brkfac": MethodSpec("kfac", ("brand", "brand"), period="T_brand", refresh=True, paper="001 Alg. 5"),
    "bkfacc": MethodSpec("kfac", ("brand", "brand"), period="T_brand", correct=True, paper="001 Alg. 6-7"),
    "auto": MethodSpec("kfac", ("by-cost", "by-cost"), period="T_brand", paper="001 Sec. 3.5"),
    "ekfac": MethodSpec("ekfac", factored=False, paper="004 Alg. 1"),
    "ekfac-ra": MethodSpec("ekfac", per_sample=False, factored=False, paper="004 Sec. 3.2"),
    "tkfac": MethodSpec("pair", estimator="trace-restricted", paper="003 eq. (4.9), (5.15)"),
    "kpsvd": MethodSpec("pair", estimator="nearest", paper="002 Sec. 3.1"),
    "deflation": MethodSpec("kronsum", estimator="deflation", factored=False, paper="002 Sec. 3.2.1"),
    "lanczos": MethodSpec("kronsum", estimator="lanczos", factored=False, paper="002 Sec. 3.2.2"),
    "kfac-corrected": MethodSpec("kronsum", estimator="corrected", factored=False, paper="002 Sec. 3.3"),
}

METHODS: tuple[str, ...] = tuple(_REGISTRY)


def lookup(method: object, name: str = "method") -> MethodSpec:
    """The entry of ``method``; ``ValueError`` naming the argument ``name`` otherwise."""
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ValueError(f"`{name}` must be one of {sorted(_REGISTRY)}, got {method!r}")
    return _REGISTRY[method]
