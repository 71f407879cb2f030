"""The feature encoder of a bundle: a feature frame -> the standardised design matrix."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from forecast.bundle.schema import BundleError

#: Variance below which an encoded column carries no information and is left out of the fit.
_MIN_VARIANCE = 1e-12


@dataclass
class Encoder:
    """Turn a feature frame into the standardised design matrix of the model.

    Numeric features are centred on their training mean and divided by their
    training standard deviation; a missing value (NaN) is imputed with the
    training mean, i.e. encodes to 0. Each categorical feature is one-hot
    encoded over its fixed levels (``FEATURES``) minus a reference level (the
    most frequent level in training), and each indicator is centred on its
    training frequency. An unseen or missing category therefore encodes to
    all-zeros for that feature, which is the training-frequency-weighted
    average effect of the feature ("unknown" handling without a reference
    bias); :meth:`unknown_counts` reports how many rows were affected so that
    callers can add a caveat. Columns with (near) zero training variance are
    marked inactive: they are left out of the fit and get coefficient 0.
    """

    numeric: tuple[str, ...]
    means: np.ndarray
    scales: np.ndarray
    categorical: dict[str, tuple[str, ...]]
    references: dict[str, str | None]
    level_means: dict[str, np.ndarray]
    active: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    time_feature: str | None = None
    time_interactions: tuple[str, ...] = ()

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, numeric: Sequence[str], categorical: Mapping[str, Sequence[str]],
        *, time_feature: str | None = None, time_interactions: Sequence[str] = (),
    ) -> Encoder:
        """Learn means, scales, reference levels and level frequencies from ``frame``.

        ``time_interactions`` (numeric features) each add a design column
        ``feature * log(1 + max(time_feature, 0))`` (raw values, missing
        imputed with the mean first), standardised like the numeric columns:
        effects that change with the time since the episode start.
        """
        _require_columns(frame, [*numeric, *categorical])
        inter = tuple(f for f in time_interactions if f in numeric and f != time_feature)
        if inter and time_feature not in numeric:
            raise ValueError(f"time_feature {time_feature!r} must be one of the numeric features")
        num = _numeric_block(frame, numeric)
        with np.errstate(invalid="ignore"):
            means = np.nanmean(num, axis=0) if num.size else np.zeros(len(numeric))
        means = np.where(np.isfinite(means), means, 0.0)
        filled = np.where(np.isnan(num), means, num)
        if inter:
            names = list(numeric)
            lt = np.log1p(np.maximum(filled[:, names.index(str(time_feature))], 0.0))
            prod = filled[:, [names.index(f) for f in inter]] * lt[:, None]
            means = np.r_[means, prod.mean(axis=0) if len(prod) else np.zeros(len(inter))]
            filled = np.hstack([filled, prod])
        scales = filled.std(axis=0) if len(filled) else np.ones(len(means))
        scales = np.where(scales > np.sqrt(_MIN_VARIANCE), scales, 1.0)
        references: dict[str, str | None] = {}
        level_means: dict[str, np.ndarray] = {}
        cats = {name: tuple(levels) for name, levels in categorical.items()}
        for name, levels in cats.items():
            values = frame[name].to_numpy(dtype=object)
            onehot = values[:, None] == np.asarray(levels, dtype=object)[None, :]
            counts = onehot.sum(axis=0)
            ref = levels[int(np.argmax(counts))] if counts.sum() > 0 else None
            references[name] = ref
            kept = [lv for lv in levels if lv != ref]
            keep_idx = [levels.index(lv) for lv in kept]
            level_means[name] = (
                onehot[:, keep_idx].mean(axis=0) if len(values) else np.zeros(len(kept))
            )
        enc = cls(tuple(numeric), means, scales, cats, references, level_means,
                  time_feature=time_feature if inter else None, time_interactions=inter)
        design = enc.transform(frame)
        var = design.var(axis=0) if len(design) else np.zeros(design.shape[1])
        enc.active = var > _MIN_VARIANCE
        return enc

    @property
    def columns(self) -> list[str]:
        """Names of the design columns, in order (``feature`` or ``feature=level``)."""
        cols = list(self.numeric)
        cols += [f"{f}*log1p({self.time_feature})" for f in self.time_interactions]
        for name, levels in self.categorical.items():
            cols += [f"{name}={lv}" for lv in levels if lv != self.references[name]]
        return cols

    @property
    def column_features(self) -> list[str]:
        """The source feature of each design column (for grouping contributions)."""
        out = list(self.numeric) + list(self.time_interactions)
        for name, levels in self.categorical.items():
            out += [name] * sum(lv != self.references[name] for lv in levels)
        return out

    def transform(self, frame: pd.DataFrame | Mapping[str, np.ndarray]) -> np.ndarray:
        """Return the (n, p) design matrix of ``frame`` (see the class notes).

        ``frame`` may also be a mapping of feature name to a column array (all
        of one length): the serving path's context columns, read without
        building or converting a wide DataFrame; the design is the same.

        Vectorised for 1 and 10,000 rows alike. The positions of the needed
        columns are looked up once per frame layout (cached). A few rows (the
        serving case) are read with ONE ``to_numpy`` of the whole frame and
        ``np.take`` of the column positions; many rows column by column with
        ``to_numpy`` into a column-major buffer (no sub-frame copy, no
        consolidation of the wide mixed-dtype frame). Standardisation is one
        broadcast; each categorical feature is an ``np.take`` of precomputed
        centred one-hot rows by level code.
        """
        if not isinstance(frame, pd.DataFrame):
            return self._finish(*self._read_mapping(frame))
        num_pos, cat_pos = self._positions(frame)
        n = len(frame)
        k = len(self.numeric)
        out_t = np.empty((len(self.columns), n))  # column-major: one row per design column
        cat_values: list[np.ndarray | pd.Series]
        if n <= _SMALL_FRAME:
            obj = frame.to_numpy()
            try:
                out_t[:k] = np.take(obj, num_pos, axis=1).T.astype(float)
            except (TypeError, ValueError):  # text cells: unparseable -> NaN -> mean
                out_t[:k] = _coerced_numeric(frame, self.numeric)
            cat_values = [obj[:, j] for j in cat_pos]
        else:
            for j, name in enumerate(self.numeric):
                col = frame[name].to_numpy()
                if col.dtype.kind not in "fiub":
                    col = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
                out_t[j] = col
            cat_values = [frame[name] for name in self.categorical]
        return self._finish(out_t, cat_values)

    def _read_mapping(
        self, columns: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The numeric rows and categorical values of a mapping of column arrays.

        Each numeric column as :meth:`transform` reads a frame's: float as it
        is, anything else as float when every cell converts, else coerced
        (unparseable -> NaN), which is what both frame paths give.
        """
        _require_columns(columns, [*self.numeric, *self.categorical])
        n = len(columns[next(iter(self.numeric))]) if self.numeric else (
            len(columns[next(iter(self.categorical))]) if self.categorical else 0)
        out_t = np.empty((len(self.columns), n))
        for j, name in enumerate(self.numeric):
            col = np.asarray(columns[name])
            if col.dtype.kind not in "fiub":
                try:
                    col = col.astype(float)
                except (TypeError, ValueError):  # text cells: unparseable -> NaN -> mean
                    col = pd.to_numeric(pd.Series(col, dtype=object), errors="coerce").to_numpy(
                        dtype=float)
            out_t[j] = col
        cat_values = [np.asarray(columns[name], dtype=object) for name in self.categorical]
        return out_t, cat_values

    def _finish(
        self, out_t: np.ndarray, cat_values: Sequence[np.ndarray | pd.Series]
    ) -> np.ndarray:
        """Standardise the numeric rows, add the interactions and the one-hot rows."""
        k = len(self.numeric)
        if k:
            np.copyto(out_t[:k], self.means[:k, None], where=np.isnan(out_t[:k]))
        if self.time_interactions:
            t_row, f_rows = self._interaction_rows()
            m = len(f_rows)
            np.multiply(out_t[f_rows], np.log1p(np.maximum(out_t[t_row], 0.0))[None, :],
                        out=out_t[k : k + m])
            k += m
        if k:
            num = out_t[:k]
            num -= self.means[:, None]
            num /= self.scales[:, None]
        for (name, levels), values in zip(self.categorical.items(), cat_values, strict=True):
            table_t = self._table_t(name)
            # Unknown or missing (code -1 -> last column of zeros) = frequency-weighted average.
            np.take(table_t, _codes(values, levels), axis=1,
                    out=out_t[k : k + table_t.shape[0]])
            k += table_t.shape[0]
        return out_t.T

    def _positions(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the numeric and categorical feature columns in ``frame`` (cached)."""
        cache = self.__dict__.setdefault("_positions_cache", {})
        key = tuple(frame.columns)
        hit = cache.get(key)
        if hit is None:
            _require_columns(frame, [*self.numeric, *self.categorical])
            if not frame.columns.is_unique:
                raise ValueError("the input frame has duplicate column names")
            hit = (frame.columns.get_indexer(list(self.numeric)).astype(np.intp),
                   frame.columns.get_indexer(list(self.categorical)).astype(np.intp))
            if len(cache) > 32:  # a handful of layouts in practice; never grow unbounded
                cache.clear()
            cache[key] = hit
        return hit

    def _interaction_rows(self) -> tuple[int, np.ndarray]:
        names = list(self.numeric)
        return (names.index(str(self.time_feature)),
                np.asarray([names.index(f) for f in self.time_interactions], dtype=np.intp))

    def _table_t(self, name: str) -> np.ndarray:
        cache = self.__dict__.setdefault("_tables_t", {})
        if name not in cache:
            cache[name] = np.ascontiguousarray(self._table(name).T)
        return cache[name]

    def _table(self, name: str) -> np.ndarray:
        """(levels + 1, kept levels) centred one-hot rows per level code; last row = unknown."""
        cache = self.__dict__.setdefault("_tables", {})
        if name not in cache:
            levels = self.categorical[name]
            kept = [i for i, lv in enumerate(levels) if lv != self.references[name]]
            eye = np.eye(len(levels))[:, kept]
            table = np.vstack([eye - self.level_means[name], np.zeros((1, len(kept)))])
            cache[name] = table
        return cache[name]

    def unknown_counts(self, frame: pd.DataFrame) -> dict[str, int]:
        """Count rows whose category is missing or not one of the fixed levels, per feature."""
        return {
            name: int((_codes(frame[name], levels) == -1).sum())
            for name, levels in self.categorical.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (arrays as lists)."""
        return {
            "numeric": list(self.numeric),
            "means": self.means.tolist(),
            "scales": self.scales.tolist(),
            # a list of pairs: the order of the categorical features is the order of
            # the coefficients, and a JSON object's keys get sorted on writing
            "categorical": [[k, list(v)] for k, v in self.categorical.items()],
            "references": dict(self.references),
            "level_means": {k: v.tolist() for k, v in self.level_means.items()},
            "active": self.active.astype(bool).tolist(),
            "time_feature": self.time_feature,
            "time_interactions": list(self.time_interactions),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], order: Sequence[str] | None = None) -> Encoder:
        """Inverse of :meth:`to_dict`.

        ``order`` names the categorical features in coefficient order; it is
        needed only for the version-1 layout (a JSON object whose key order was
        lost), see :data:`READABLE_VERSIONS`.
        """
        raw = d["categorical"]
        if isinstance(raw, Mapping):
            names = list(order) if order is not None else list(raw)
            if sorted(names) != sorted(raw):
                raise BundleError("encoder: the categorical features do not match their order")
            pairs = [(k, raw[k]) for k in names]
        else:
            pairs = [(str(k), v) for k, v in raw]
        return cls(
            tuple(d["numeric"]),
            np.asarray(d["means"], dtype=float),
            np.asarray(d["scales"], dtype=float),
            {k: tuple(v) for k, v in pairs},
            dict(d["references"]),
            {k: np.asarray(v, dtype=float) for k, v in d["level_means"].items()},
            np.asarray(d["active"], dtype=bool),
            d.get("time_feature"),
            tuple(d.get("time_interactions", ())),
        )


def _encoder_of(d: Mapping[str, Any], name: str) -> Encoder:
    """The encoder of a bundle's JSON, checked against its stored design columns."""
    stored = [str(c) for c in d.get("design_columns") or []]
    raw = d["encoder"].get("categorical")
    order = None
    if isinstance(raw, Mapping):  # version 1: recover the fit order from the design columns
        order = list(dict.fromkeys(c.split("=", 1)[0] for c in stored if "=" in c
                                   and c.split("=", 1)[0] in raw))
        order += [k for k in raw if k not in order]  # features without an active level
    try:
        enc = Encoder.from_dict(d["encoder"], order)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{name}: cannot read the encoder ({exc})") from exc
    if stored and enc.columns != stored:
        raise BundleError(f"{name}: the encoder's columns do not match design_columns")
    return enc


def _require_columns(frame: pd.DataFrame | Mapping[str, Any], names: Sequence[str]) -> None:
    have = frame.columns if isinstance(frame, pd.DataFrame) else frame
    missing = [c for c in names if c not in have]
    if missing:
        raise ValueError(
            f"feature columns missing from the input frame: {', '.join(missing)}; "
            "build it with forecast.features (features_at / landmark_dataset)"
        )


#: Frames up to this many rows are encoded through one ``to_numpy`` of the whole frame.
_SMALL_FRAME = 64


def _coerced_numeric(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """(len(names), n) numeric block with unparseable cells as NaN."""
    return np.stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float)
                     for c in names]) if names else np.zeros((0, len(frame)))


def _float_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """One column as float (a Series' own ``to_numpy`` is the fast path at one row)."""
    col = frame[name]
    try:
        return col.to_numpy(dtype=float)
    except (TypeError, ValueError):  # text cells: coerce (unparseable -> NaN)
        return pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)


def _numeric_block(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    if not names:
        return np.zeros((len(frame), 0))
    block = frame[list(names)]
    try:
        return block.to_numpy(dtype=float)
    except (TypeError, ValueError):  # text cells: coerce (unparseable -> NaN -> mean)
        return block.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


@functools.lru_cache(maxsize=64)
def _level_index(levels: tuple[str, ...]) -> dict[str, int]:
    return {lv: i for i, lv in enumerate(levels)}


def _codes(values: pd.Series | np.ndarray, levels: Sequence[str]) -> np.ndarray:
    """Level index of each value; -1 for missing or unseen values."""
    if len(values) <= _SMALL_FRAME:  # serving: a dict lookup beats hashing the column
        index = _level_index(tuple(levels))
        arr = values if isinstance(values, np.ndarray) else values.to_numpy(dtype=object)
        return np.fromiter((index.get(v, -1) if isinstance(v, str) else -1 for v in arr),
                           dtype=np.intp, count=len(arr))
    values = pd.Series(values) if isinstance(values, np.ndarray) else values
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = values.cat.categories
        lut = np.asarray([levels.index(c) if c in levels else -1 for c in cats] + [-1],
                         dtype=np.intp)
        return lut[np.asarray(values.cat.codes, dtype=np.intp)]
    # Hash the column once, then map its few distinct values to level indices.
    fcodes, uniques = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=True)
    index = {lv: i for i, lv in enumerate(levels)}
    lut = np.asarray([index.get(u, -1) if isinstance(u, str) else -1 for u in uniques] + [-1],
                     dtype=np.intp)
    return lut[fcodes]  # sentinel -1 picks the trailing -1
