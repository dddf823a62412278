"""PhysioNet/CinC Challenge 2012: irregularly sampled ICU time series, in-hospital death.

Each patient file (``Time,Parameter,Value``, time ``HH:MM`` since ICU admission, -1 = missing)
becomes observation times in [0, 1] (hours / 48), a values array [T, V] and an observation mask
[T, V] over the 37 time-series variables in `PHYSIONET_VARIABLES` (T = distinct observation
times), plus the static descriptors Age, Gender, Height, ICUType and Weight read from the
``00:00`` lines. Measurements of one variable repeated at the same time are averaged. Lines with
an empty or unknown parameter name and values of -1 are dropped (and counted). A 00:00 ``Weight``
line is the static admission weight; later ``Weight`` lines are the time series.

Parsed (un-normalised) records are cached as ``.npz`` in a cache directory. Normalisation
statistics come from a training split only (`PhysioNetNormalizer.fit`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .paths import default_data_dir
from .splits import random_split_indices

logger = logging.getLogger(__name__)

PHYSIONET_VARIABLES = (
    "ALP", "ALT", "AST", "Albumin", "BUN", "Bilirubin", "Cholesterol", "Creatinine", "DiasABP",
    "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "MAP", "MechVent", "Mg",
    "NIDiasABP", "NIMAP", "NISysABP", "Na", "PaCO2", "PaO2", "Platelets", "RespRate", "SaO2",
    "SysABP", "Temp", "TroponinI", "TroponinT", "Urine", "WBC", "Weight", "pH",
)  # fmt: skip
NUM_PHYSIONET_VARIABLES = len(PHYSIONET_VARIABLES)  # 37
STATIC_DESCRIPTORS = ("Age", "Gender", "Height", "ICUType", "Weight")
# Features produced from the descriptors by `PhysioNetNormalizer.static_features`.
STATIC_FEATURES = (
    "Age", "Gender", "Height", "Weight",
    "Age_missing", "Gender_missing", "Height_missing", "Weight_missing", "ICUType_missing",
    "ICUType_1", "ICUType_2", "ICUType_3", "ICUType_4",
)  # fmt: skip
NUM_STATIC_FEATURES = len(STATIC_FEATURES)
HORIZON_HOURS = 48.0
PHYSIONET_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
CACHE_VERSION = 1
_VAR_INDEX = {v: i for i, v in enumerate(PHYSIONET_VARIABLES)}
_STATIC_INDEX = {v: i for i, v in enumerate(STATIC_DESCRIPTORS)}
_CONTINUOUS_STATIC = ("Age", "Height", "Weight")


def default_cache_dir() -> Path:
    """``~/.cache/perforate``."""
    return Path.home() / ".cache" / "perforate"


# ---------------------------------------------------------------------------------- records


@dataclass
class PhysioNetRecords:
    """Parsed, un-normalised patients of one set, stored flat with per-patient offsets.

    Patient i owns rows ``offsets[i]:offsets[i + 1]`` of `times` [sum T] (in [0, 1]),
    `values` [sum T, V] (0 where unobserved) and `mask` [sum T, V] (bool). `static` [N, 5] holds
    `STATIC_DESCRIPTORS` with NaN where missing; `labels` [N] is In-hospital_death (0/1).
    """

    record_ids: np.ndarray
    times: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray
    static: np.ndarray
    labels: np.ndarray
    set_name: str
    variables: tuple[str, ...] = PHYSIONET_VARIABLES
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.record_ids)

    def lengths(self) -> np.ndarray:
        """Number of observation times per patient."""
        return np.diff(self.offsets)

    def patient(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times [T], values [T, V], mask [T, V]) of patient `i`, un-normalised."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.times[a:b], self.values[a:b], self.mask[a:b]

    def rows_of(self, indices: np.ndarray) -> np.ndarray:
        """Boolean row selector over the flat arrays for the patients in `indices`."""
        sel = np.zeros(len(self.times), dtype=bool)
        owner = np.repeat(np.arange(len(self)), self.lengths())
        sel[np.isin(owner, indices)] = True
        return sel


def _parse_time(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def parse_patient(text: str, counts: Counter[str] | None = None) -> tuple[int, list, np.ndarray]:
    """Parse one patient file's text.

    Returns ``(record_id, [(minute, variable_index, value), ...], static [5] with NaN)``.
    `counts` (if given) accumulates how many lines were dropped and why.
    """
    counts = counts if counts is not None else Counter()
    lines = text.splitlines()
    if not lines or lines[0].strip() != "Time,Parameter,Value":
        raise ValueError(f"unexpected header {lines[:1]!r}")
    record_id = -1
    static = np.full(len(STATIC_DESCRIPTORS), np.nan, dtype=np.float32)
    obs: list[tuple[int, int, float]] = []
    for line in lines[1:]:
        if not line.strip():
            continue
        t_text, param, v_text = line.strip().split(",")
        minute, value = _parse_time(t_text), float(v_text)
        if param == "RecordID":
            record_id = int(value)
        elif minute == 0 and param in _STATIC_INDEX:
            k = _STATIC_INDEX[param]
            if value == -1:
                counts["static_missing"] += 1
            elif np.isnan(static[k]):
                static[k] = value
            else:
                counts[f"duplicate_static_{param}"] += 1
        elif param in _VAR_INDEX:
            if value == -1:
                counts["missing_value"] += 1
            elif minute > HORIZON_HOURS * 60:
                counts["beyond_horizon"] += 1
            else:
                obs.append((minute, _VAR_INDEX[param], value))
        elif param == "":
            counts["empty_parameter"] += 1
        else:
            counts[f"unknown_parameter_{param}"] += 1
    return record_id, obs, static


def _group_observations(obs: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times [T] in [0, 1], values [T, V], mask [T, V]); same-time repeats are averaged."""
    v = NUM_PHYSIONET_VARIABLES
    if not obs:
        return np.zeros(0, np.float32), np.zeros((0, v), np.float32), np.zeros((0, v), bool)
    arr = np.asarray(obs, dtype=np.float64)
    minutes, t_inv = np.unique(arr[:, 0], return_inverse=True)
    var = arr[:, 1].astype(np.int64)
    sums = np.zeros((len(minutes), v))
    cnt = np.zeros((len(minutes), v))
    np.add.at(sums, (t_inv, var), arr[:, 2])
    np.add.at(cnt, (t_inv, var), 1.0)
    mask = cnt > 0
    values = np.where(mask, sums / np.maximum(cnt, 1), 0.0).astype(np.float32)
    return (minutes / (HORIZON_HOURS * 60)).astype(np.float32), values, mask


def read_outcomes(path: str | os.PathLike[str]) -> dict[int, int]:
    """RecordID -> In-hospital_death from an Outcomes-*.txt file."""
    with open(path) as fh:
        header = fh.readline().strip().split(",")
        try:
            rid_col, death_col = header.index("RecordID"), header.index("In-hospital_death")
        except ValueError as exc:
            raise ValueError(f"{path}: expected RecordID and In-hospital_death columns") from exc
        out = {}
        for line in fh:
            if line.strip():
                parts = line.strip().split(",")
                out[int(parts[rid_col])] = int(parts[death_col])
    return out


def _set_paths(root: Path, set_name: str) -> tuple[Path, Path]:
    archive, outcomes = root / f"set-{set_name}.tar.gz", root / f"Outcomes-{set_name}.txt"
    for p in (archive, outcomes):
        if not p.is_file():
            raise FileNotFoundError(
                f"PhysioNet 2012 file missing: {p}. Put set-{set_name}.tar.gz and "
                f"Outcomes-{set_name}.txt (from https://physionet.org/content/challenge-2012/) "
                f"in {root}, or set $PERFORATE_DATA to a directory with a physionet2012/ folder."
            )
    return archive, outcomes


def parse_physionet_archive(
    archive: str | os.PathLike[str],
    outcomes: str | os.PathLike[str],
    set_name: str,
    limit: int | None = None,
) -> PhysioNetRecords:
    """Parse a ``set-*.tar.gz`` (read in memory) and its outcomes; patients sorted by RecordID.

    `limit` parses only the first `limit` patient files of the archive.
    """
    labels_by_id = read_outcomes(outcomes)
    counts: Counter[str] = Counter()
    patients = []
    with tarfile.open(archive, "r:gz") as tf:
        for member in tf:
            if limit is not None and len(patients) >= limit:
                break
            if not (member.isfile() and member.name.endswith(".txt")):
                continue
            fh = tf.extractfile(member)
            if fh is None:
                continue
            try:
                rid, obs, static = parse_patient(fh.read().decode("utf-8"), counts)
            except ValueError as exc:
                raise ValueError(f"{archive}:{member.name}: {exc}") from exc
            if rid not in labels_by_id:
                counts["no_outcome"] += 1
                logger.warning("PhysioNet: %s has no outcome; skipped", member.name)
                continue
            patients.append((rid, *_group_observations(obs), static))
    if not patients:
        raise ValueError(f"{archive}: no patient files found")
    patients.sort(key=lambda p: p[0])
    lengths = np.array([len(p[1]) for p in patients])
    dropped = {k: v for k, v in sorted(counts.items())}
    if dropped:
        logger.info("PhysioNet set-%s: dropped/merged lines: %s", set_name, dropped)
    return PhysioNetRecords(
        record_ids=np.array([p[0] for p in patients], dtype=np.int64),
        times=np.concatenate([p[1] for p in patients]),
        values=np.concatenate([p[2] for p in patients]),
        mask=np.concatenate([p[3] for p in patients]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        static=np.stack([p[4] for p in patients]),
        labels=np.array([labels_by_id[p[0]] for p in patients], dtype=np.float32),
        set_name=set_name,
        stats=dropped,
    )


def _cache_path(
    cache_dir: Path, archive: Path, outcomes: Path, set_name: str, limit: int | None
) -> Path:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{','.join(PHYSIONET_VARIABLES)}".encode())
    for p in (archive, outcomes):
        st = p.stat()
        h.update(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    tag = "all" if limit is None else f"first{limit}"
    return cache_dir / f"physionet2012-set-{set_name}-{tag}-{h.hexdigest()[:12]}.npz"


def _save_records(path: Path, rec: PhysioNetRecords) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp,
        record_ids=rec.record_ids, times=rec.times, values=rec.values, mask=rec.mask,
        offsets=rec.offsets, static=rec.static, labels=rec.labels,
        variables=np.array(rec.variables), stat_keys=np.array(list(rec.stats), dtype=str),
        stat_values=np.array(list(rec.stats.values()), dtype=np.int64),
    )  # fmt: skip
    os.replace(tmp, path)


def _load_records(path: Path, set_name: str) -> PhysioNetRecords:
    with np.load(path, allow_pickle=False) as z:
        variables = tuple(str(v) for v in z["variables"])
        if variables != PHYSIONET_VARIABLES:
            raise ValueError(f"{path}: cached variable list differs")
        keys = [str(k) for k in z["stat_keys"]]
        stats = {k: int(v) for k, v in zip(keys, z["stat_values"], strict=True)}
        return PhysioNetRecords(
            record_ids=z["record_ids"], times=z["times"], values=z["values"], mask=z["mask"],
            offsets=z["offsets"], static=z["static"], labels=z["labels"], set_name=set_name,
            stats=stats,
        )  # fmt: skip


def load_physionet(
    root: str | os.PathLike[str] | None = None,
    set_name: str = "a",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    use_cache: bool = True,
) -> PhysioNetRecords:
    """Parse (or load from the cache) one PhysioNet 2012 set, un-normalised.

    `root` holds ``set-{a,b,c}.tar.gz`` and ``Outcomes-{a,b,c}.txt`` (default:
    ``default_data_dir()/physionet2012``). The parsed records are cached in `cache_dir`
    (default ``~/.cache/perforate``) keyed by the files' size and mtime; `limit` parses only the
    first `limit` patients of the archive (cached separately).
    """
    if set_name not in ("a", "b", "c"):
        raise ValueError(f"set_name must be 'a', 'b' or 'c', got {set_name!r}")
    base = Path(root).expanduser() if root is not None else default_data_dir() / "physionet2012"
    archive, outcomes = _set_paths(base, set_name)
    cache = None
    if use_cache:
        cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache = _cache_path(cache_root, archive, outcomes, set_name, limit)
        if cache.is_file():
            try:
                rec = _load_records(cache, set_name)
                logger.info(
                    "PhysioNet set-%s: %d patients from cache %s", set_name, len(rec), cache
                )
                return rec
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("PhysioNet: ignoring unreadable cache %s (%s)", cache, exc)
    start = time.perf_counter()
    rec = parse_physionet_archive(archive, outcomes, set_name, limit)
    logger.info(
        "PhysioNet set-%s: parsed %d patients in %.2f s",
        set_name, len(rec), time.perf_counter() - start,
    )  # fmt: skip
    if cache is not None:
        try:
            _save_records(cache, rec)
        except OSError as exc:
            logger.warning("PhysioNet: could not write cache %s (%s)", cache, exc)
    return rec


def physionet_splits(
    n: int,
    seed: int = 0,
    fractions: Sequence[float] = PHYSIONET_SPLIT_FRACTIONS,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/val/test index arrays over ``range(n)`` (default 60/20/20).

    With `labels`, the split is stratified: each class is split separately with the same
    fractions, so every part keeps the mortality rate.
    """
    if labels is None:
        train, val, test = random_split_indices(n, fractions, seed)
        return train, val, test
    labels = np.asarray(labels)
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries, expected {n}")
    parts: list[list[np.ndarray]] = [[], [], []]
    for k, cls in enumerate(np.unique(labels)):
        members = np.flatnonzero(labels == cls)
        for j, chunk in enumerate(random_split_indices(len(members), fractions, seed + 7919 * k)):
            parts[j].append(members[chunk])
    rng = np.random.default_rng(seed)
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    return train, val, test


# ---------------------------------------------------------------------------- normalisation


@dataclass
class PhysioNetNormalizer:
    """Per-variable mean/std of the observed values, and of Age/Height/Weight, on training data."""

    mean: np.ndarray
    std: np.ndarray
    static_mean: np.ndarray
    static_std: np.ndarray

    @classmethod
    def fit(cls, records: PhysioNetRecords, train_indices: np.ndarray) -> PhysioNetNormalizer:
        """Statistics over the patients in `train_indices` only (std 1 for constant/unseen)."""
        train_indices = np.asarray(train_indices)
        rows = records.rows_of(train_indices)
        vals, mask = records.values[rows].astype(np.float64), records.mask[rows]
        count = mask.sum(0)
        mean = np.where(mask, vals, 0).sum(0) / np.maximum(count, 1)
        var = np.where(mask, (vals - mean) ** 2, 0).sum(0) / np.maximum(count, 1)
        std = np.sqrt(var)
        std = np.where((count > 0) & (std > 1e-8), std, 1.0)
        static = records.static[train_indices].astype(np.float64)
        cols = [STATIC_DESCRIPTORS.index(c) for c in _CONTINUOUS_STATIC]
        cont = static[:, cols].reshape(-1, len(cols))
        seen = ~np.isnan(cont)
        n_seen = np.maximum(seen.sum(0), 1)
        s_mean = np.where(seen, cont, 0).sum(0) / n_seen
        s_std = np.sqrt(np.where(seen, (cont - s_mean) ** 2, 0).sum(0) / n_seen)
        s_std = np.where(s_std > 1e-8, s_std, 1.0)
        return cls(
            mean.astype(np.float32), std.astype(np.float32),
            s_mean.astype(np.float32), s_std.astype(np.float32),
        )  # fmt: skip

    def normalize_values(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Standardised values, 0 where unobserved."""
        return np.where(mask, (values - self.mean) / self.std, 0.0).astype(np.float32)

    def static_features(self, static: np.ndarray) -> np.ndarray:
        """`STATIC_FEATURES` [..., 13] from raw descriptors [..., 5] (NaN = missing)."""
        s = np.asarray(static, dtype=np.float32)
        get = {name: s[..., i] for i, name in enumerate(STATIC_DESCRIPTORS)}
        missing = {name: np.isnan(get[name]) for name in STATIC_DESCRIPTORS}
        cont = [
            np.where(missing[c], 0.0, (get[c] - self.static_mean[k]) / self.static_std[k])
            for k, c in enumerate(_CONTINUOUS_STATIC)
        ]
        icu = np.nan_to_num(get["ICUType"], nan=0).astype(np.int64)
        feats = [
            cont[0], np.nan_to_num(get["Gender"], nan=0.0), cont[1], cont[2],
            *(missing[c].astype(np.float32) for c in ("Age", "Gender", "Height", "Weight")),
            missing["ICUType"].astype(np.float32),
            *((icu == k).astype(np.float32) for k in (1, 2, 3, 4)),
        ]  # fmt: skip
        return np.stack(feats, axis=-1).astype(np.float32)

    def state_dict(self) -> dict[str, list[float]]:
        """Plain lists, e.g. to store next to a model checkpoint."""
        return {k: getattr(self, k).tolist() for k in ("mean", "std", "static_mean", "static_std")}


# ----------------------------------------------------------------------- datasets + collate


class PhysioNetDataset(Dataset):
    """Normalised patients ``records[indices]``; items are dicts of tensors.

    Item keys: ``times`` [T], ``values`` [T, V] (standardised, 0 where unobserved), ``mask``
    [T, V] (float 0/1), ``static`` [13] (`STATIC_FEATURES`), ``label`` (scalar float),
    ``record_id``.
    """

    def __init__(
        self,
        records: PhysioNetRecords,
        indices: np.ndarray | Sequence[int] | None,
        normalizer: PhysioNetNormalizer,
    ) -> None:
        self.records = records
        self.indices = np.arange(len(records)) if indices is None else np.asarray(indices)
        self.normalizer = normalizer
        self._static = normalizer.static_features(records.static)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.records.labels[self.indices]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        j = int(self.indices[i])
        times, values, mask = self.records.patient(j)
        return {
            "times": torch.from_numpy(times.copy()),
            "values": torch.from_numpy(self.normalizer.normalize_values(values, mask)),
            "mask": torch.from_numpy(mask.astype(np.float32)),
            "static": torch.from_numpy(self._static[j].copy()),
            "label": torch.tensor(float(self.records.labels[j])),
            "record_id": torch.tensor(int(self.records.record_ids[j])),
        }


def collate_physionet(items: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Pad to the longest patient: times [B, T], values/mask [B, T, V] (padding has mask 0),
    lengths [B], static [B, S], label [B], record_id [B]."""
    if not items:
        raise ValueError("collate_physionet needs at least one item")
    lengths = torch.tensor([len(it["times"]) for it in items], dtype=torch.long)
    b, t_max, v = len(items), max(int(lengths.max()), 1), items[0]["values"].shape[-1]
    times = torch.zeros(b, t_max)
    values = torch.zeros(b, t_max, v)
    mask = torch.zeros(b, t_max, v)
    for k, it in enumerate(items):
        n = len(it["times"])
        times[k, :n], values[k, :n], mask[k, :n] = it["times"], it["values"], it["mask"]
    return {
        "times": times,
        "values": values,
        "mask": mask,
        "lengths": lengths,
        "static": torch.stack([it["static"] for it in items]),
        "label": torch.stack([it["label"] for it in items]),
        "record_id": torch.stack([it["record_id"] for it in items]),
    }


@dataclass
class PhysioNetSplits:
    """set-a train/val/test (normalised with set-a train statistics) and optional set-c test."""

    train: PhysioNetDataset
    val: PhysioNetDataset
    test: PhysioNetDataset
    test_c: PhysioNetDataset | None
    normalizer: PhysioNetNormalizer


def load_physionet_splits(
    root: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    include_set_c: bool = True,
    stratify: bool = False,
) -> PhysioNetSplits:
    """set-a split 60/20/20 by `seed` (optionally stratified by label), set-c as extra test.

    All four datasets are normalised with statistics of the set-a training split. `limit`
    (for quick tests) parses only the first `limit` patients of each archive.
    """
    rec_a = load_physionet(root, "a", cache_dir=cache_dir, limit=limit)
    tr, va, te = physionet_splits(len(rec_a), seed, labels=rec_a.labels if stratify else None)
    norm = PhysioNetNormalizer.fit(rec_a, tr)
    test_c = None
    if include_set_c:
        rec_c = load_physionet(root, "c", cache_dir=cache_dir, limit=limit)
        test_c = PhysioNetDataset(rec_c, None, norm)
    return PhysioNetSplits(
        PhysioNetDataset(rec_a, tr, norm),
        PhysioNetDataset(rec_a, va, norm),
        PhysioNetDataset(rec_a, te, norm),
        test_c,
        norm,
    )
