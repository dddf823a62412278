"""Tox21 (MoleculeNet): 12 binary toxicity tasks, molecular graphs or Morgan fingerprints.

RDKit and scikit-learn are imported only inside the functions that need them.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from .. import require
from .paths import resolve_file
from .splits import random_split_indices

logger = logging.getLogger(__name__)

TOX21_TASKS = (
    "NR-AR", "NR-AR-LBD", "NR-AhR", "NR-Aromatase", "NR-ER", "NR-ER-LBD",
    "NR-PPAR-gamma", "SR-ARE", "SR-ATAD5", "SR-HSE", "SR-MMP", "SR-p53",
)  # fmt: skip
NUM_TOX21_TASKS = len(TOX21_TASKS)
TOX21_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

# Atom features: element one-hot (+ other), degree 0..5 (+ >5), formal charge -2..2 (+ other),
# total H count 0..3 (+ 4 or more), aromatic, hybridisation (SP..SP3D2 + other), in ring.
ATOM_ELEMENTS = (
    "C", "N", "O", "S", "F", "Cl", "Br", "I", "P", "Si", "B", "Se",
    "Na", "K", "Ca", "Fe", "Zn", "Cu", "Sn", "Hg", "As", "H",
)  # fmt: skip
_DEGREES = 7  # 0..5, then ">5"
_CHARGES = (-2, -1, 0, 1, 2)  # then "other"
_NUM_HS = 5  # 0..3, then ">=4"
_HYBRIDISATIONS = ("SP", "SP2", "SP3", "SP3D", "SP3D2")  # then "other"
ATOM_FEATURE_DIM = (
    len(ATOM_ELEMENTS) + 1 + _DEGREES + len(_CHARGES) + 1 + _NUM_HS + 1
    + len(_HYBRIDISATIONS) + 1 + 1
)  # fmt: skip
# Bond features: type one-hot (single, double, triple, aromatic, other), conjugated, in ring.
_BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")
BOND_FEATURE_DIM = len(_BOND_TYPES) + 1 + 2


# --------------------------------------------------------------------------- graph containers


@dataclass
class MolGraph:
    """One molecule: atom features [n, F_atom], directed edges [2, e], edge features [e, F_bond].

    Every bond appears twice (i->j and j->i); ``edge_index[0]`` is the source atom.
    """

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor

    @property
    def num_atoms(self) -> int:
        return int(self.x.shape[0])


@dataclass
class GraphBatch:
    """Several molecules as one disjoint graph; ``batch[i]`` is atom i's molecule index."""

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    batch: Tensor
    num_graphs: int
    y: Tensor | None = None
    mask: Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GraphBatch:
        """A copy with every tensor moved to `device`."""
        moved = {
            f.name: (
                getattr(self, f.name).to(device, non_blocking=non_blocking)
                if isinstance(getattr(self, f.name), Tensor)
                else getattr(self, f.name)
            )
            for f in fields(self)
        }
        return GraphBatch(**moved)


def collate_graphs(items: Sequence[tuple[MolGraph, Tensor, Tensor] | MolGraph]) -> GraphBatch:
    """Batch molecules: concatenate atoms and edges, offset edge indices, build `batch`.

    Items are ``(graph, labels [T], mask [T])`` as yielded by the Tox21 graph datasets, or bare
    `MolGraph`s (then ``y`` and ``mask`` are None).
    """
    if not items:
        raise ValueError("collate_graphs needs at least one item")
    graphs = [it if isinstance(it, MolGraph) else it[0] for it in items]
    sizes = torch.tensor([g.num_atoms for g in graphs], dtype=torch.long)
    offsets = torch.cumsum(sizes, 0) - sizes
    edge_index = torch.cat([g.edge_index + off for g, off in zip(graphs, offsets, strict=True)], 1)
    y = mask = None
    if not isinstance(items[0], MolGraph):
        y = torch.stack([it[1] for it in items])  # type: ignore[index]
        mask = torch.stack([it[2] for it in items])  # type: ignore[index]
    return GraphBatch(
        x=torch.cat([g.x for g in graphs]),
        edge_index=edge_index,
        edge_attr=torch.cat([g.edge_attr for g in graphs]),
        batch=torch.repeat_interleave(torch.arange(len(graphs)), sizes),
        num_graphs=len(graphs),
        y=y,
        mask=mask,
    )


class MolGraphDataset(Dataset):
    """Molecular graphs stored as flat arrays with offsets; items are (MolGraph, y, mask)."""

    def __init__(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        atom_offsets: Tensor,
        edge_offsets: Tensor,
        labels: Tensor,
        mask: Tensor,
    ) -> None:
        self.x, self.edge_index, self.edge_attr = x, edge_index, edge_attr
        self.atom_offsets, self.edge_offsets = atom_offsets, edge_offsets
        self.labels, self.mask = labels, mask

    def __len__(self) -> int:
        return len(self.labels)

    def graph(self, i: int) -> MolGraph:
        """Molecule `i` with edge indices local to it."""
        a0, a1 = int(self.atom_offsets[i]), int(self.atom_offsets[i + 1])
        e0, e1 = int(self.edge_offsets[i]), int(self.edge_offsets[i + 1])
        return MolGraph(self.x[a0:a1], self.edge_index[:, e0:e1], self.edge_attr[e0:e1])

    def __getitem__(self, i: int) -> tuple[MolGraph, Tensor, Tensor]:
        return self.graph(i), self.labels[i], self.mask[i]


# ------------------------------------------------------------------------------ featurisation


def _rdkit_chem() -> object:
    return require("rdkit.Chem", "Featurising Tox21 SMILES")


def parse_smiles(smiles: Sequence[str]) -> tuple[list[object], list[int]]:
    """RDKit molecules for the valid SMILES and their positions; RDKit's own logging muted."""
    chem = _rdkit_chem()
    rdlogger = require("rdkit.RDLogger", "Featurising Tox21 SMILES")
    mols: list[object] = []
    valid: list[int] = []
    rdlogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]
    try:
        for i, smi in enumerate(smiles):
            mol = chem.MolFromSmiles(smi) if smi else None  # type: ignore[attr-defined]
            if mol is None or mol.GetNumAtoms() == 0:
                logger.warning("Tox21: skipping invalid SMILES #%d: %r", i, smi)
                continue
            mols.append(mol)
            valid.append(i)
    finally:
        rdlogger.EnableLog("rdApp.*")  # type: ignore[attr-defined]
    return mols, valid


def _one_hot_rows(index: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(index), width), dtype=np.float32)
    out[np.arange(len(index)), index] = 1.0
    return out


def atom_features(mol: object) -> np.ndarray:
    """Atom feature matrix [n_atoms, ATOM_FEATURE_DIM] (float32) of an RDKit molecule."""
    elem_pos = {e: i for i, e in enumerate(ATOM_ELEMENTS)}
    charge_pos = {c: i for i, c in enumerate(_CHARGES)}
    hyb_pos = {h: i for i, h in enumerate(_HYBRIDISATIONS)}
    cols = []
    for atom in mol.GetAtoms():  # type: ignore[attr-defined]
        cols.append((
            elem_pos.get(atom.GetSymbol(), len(ATOM_ELEMENTS)),
            min(atom.GetDegree(), _DEGREES - 1),
            charge_pos.get(atom.GetFormalCharge(), len(_CHARGES)),
            min(atom.GetTotalNumHs(), _NUM_HS - 1),
            int(atom.GetIsAromatic()),
            hyb_pos.get(str(atom.GetHybridization()), len(_HYBRIDISATIONS)),
            int(atom.IsInRing()),
        ))  # fmt: skip
    c = np.asarray(cols, dtype=np.int64).reshape(-1, 7)
    return np.concatenate(
        [
            _one_hot_rows(c[:, 0], len(ATOM_ELEMENTS) + 1),
            _one_hot_rows(c[:, 1], _DEGREES),
            _one_hot_rows(c[:, 2], len(_CHARGES) + 1),
            _one_hot_rows(c[:, 3], _NUM_HS),
            c[:, 4:5].astype(np.float32),
            _one_hot_rows(c[:, 5], len(_HYBRIDISATIONS) + 1),
            c[:, 6:7].astype(np.float32),
        ],
        axis=1,
    )


def bond_graph(mol: object) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges [2, 2*n_bonds] (int64) and their features [2*n_bonds, BOND_FEATURE_DIM]."""
    type_pos = {t: i for i, t in enumerate(_BOND_TYPES)}
    src, dst, cols = [], [], []
    for bond in mol.GetBonds():  # type: ignore[attr-defined]
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        row = (
            type_pos.get(str(bond.GetBondType()), len(_BOND_TYPES)),
            int(bond.GetIsConjugated()),
            int(bond.IsInRing()),
        )
        src += [i, j]
        dst += [j, i]
        cols += [row, row]
    c = np.asarray(cols, dtype=np.int64).reshape(-1, 3)
    attr = np.concatenate(
        [_one_hot_rows(c[:, 0], len(_BOND_TYPES) + 1), c[:, 1:].astype(np.float32)], axis=1
    )
    return np.asarray([src, dst], dtype=np.int64).reshape(2, -1), attr


def smiles_to_graph(smiles: str) -> MolGraph | None:
    """A `MolGraph` for one SMILES string, or None if RDKit cannot parse it."""
    mols, _ = parse_smiles([smiles])
    if not mols:
        return None
    ei, ea = bond_graph(mols[0])
    return MolGraph(
        torch.from_numpy(atom_features(mols[0])), torch.from_numpy(ei), torch.from_numpy(ea)
    )


def morgan_fingerprints(mols: Sequence[object], radius: int = 2, n_bits: int = 2048) -> np.ndarray:
    """Morgan (ECFP-like) bit fingerprints [n, n_bits] as float32, via rdFingerprintGenerator."""
    gen_mod = require("rdkit.Chem.rdFingerprintGenerator", "Morgan fingerprints")
    gen = gen_mod.GetMorganGenerator(radius=radius, fpSize=n_bits)  # type: ignore[attr-defined]
    out = np.zeros((len(mols), n_bits), dtype=np.float32)
    for i, mol in enumerate(mols):
        out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


# ---------------------------------------------------------------------------- CSV + caching


def read_tox21_csv(csv_path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """SMILES and the label matrix [n, 12] (float32, NaN where unlabelled) from tox21.csv."""
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in (*TOX21_TASKS, "smiles") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}")
        smiles, rows = [], []
        for rec in reader:
            smiles.append(rec["smiles"].strip())
            rows.append([float(rec[t]) if rec[t].strip() else math.nan for t in TOX21_TASKS])
    labels = np.asarray(rows, dtype=np.float32).reshape(-1, NUM_TOX21_TASKS)
    bad = ~np.isnan(labels) & (labels != 0) & (labels != 1)
    if bad.any():
        raise ValueError(f"{csv_path}: labels must be 0, 1 or empty")
    return smiles, labels


@dataclass
class _Featurized:
    labels: Tensor  # [n_valid, 12], NaN = missing
    mask: Tensor  # [n_valid, 12] bool
    smiles: list[str]
    n_invalid: int
    seconds: float
    fingerprints: Tensor | None = None
    graphs: MolGraphDataset | None = None


_CACHE: dict[tuple[str, int, int, str], _Featurized] = {}


def clear_tox21_cache() -> None:
    """Forget featurised Tox21 data held in memory."""
    _CACHE.clear()


def _featurize(path: Path, featurizer: str) -> _Featurized:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, featurizer)
    if key in _CACHE:
        return _CACHE[key]
    start = time.perf_counter()
    smiles, labels = read_tox21_csv(path)
    mols, valid = parse_smiles(smiles)
    n_invalid = len(smiles) - len(valid)
    if n_invalid:
        logger.warning(
            "Tox21: skipped %d of %d SMILES that RDKit cannot parse", n_invalid, len(smiles)
        )
    y = torch.from_numpy(labels[valid])
    data = _Featurized(
        labels=y,
        mask=~torch.isnan(y),
        smiles=[smiles[i] for i in valid],
        n_invalid=n_invalid,
        seconds=0.0,
    )
    if featurizer == "morgan":
        data.fingerprints = torch.from_numpy(morgan_fingerprints(mols))
    else:
        xs, eis, eas = [], [], []
        for mol in mols:
            xs.append(atom_features(mol))
            ei, ea = bond_graph(mol)
            eis.append(ei)
            eas.append(ea)
        n_atoms = np.array([len(x) for x in xs])
        n_edges = np.array([ei.shape[1] for ei in eis])
        data.graphs = MolGraphDataset(
            x=torch.from_numpy(np.concatenate(xs)),
            edge_index=torch.from_numpy(np.concatenate(eis, axis=1)),
            edge_attr=torch.from_numpy(np.concatenate(eas)),
            atom_offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(n_atoms)])),
            edge_offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(n_edges)])),
            labels=data.labels,
            mask=data.mask,
        )
    data.seconds = time.perf_counter() - start
    logger.info(
        "Tox21: featurised %d molecules (%s) in %.2f s", len(valid), featurizer, data.seconds
    )
    _CACHE[key] = data
    return data


@dataclass
class Tox21Splits:
    """Random 80/10/10 Tox21 split; datasets yield (features, labels [12], mask [12]).

    With ``featurizer="morgan"`` features are float32 [2048] fingerprints (a TensorDataset
    subset, batch with the default collate); with ``"graph"`` they are `MolGraph`s (batch
    with `collate_graphs`).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    tasks: tuple[str, ...]
    featurizer: str
    n_invalid: int
    featurize_seconds: float
    indices: dict[str, np.ndarray]

    def __iter__(self) -> Iterator[Dataset]:
        """Lets ``train, val, test = splits`` work."""
        return iter((self.train, self.val, self.test))


def load_tox21(
    csv_path: str | os.PathLike[str] | None = None, *, featurizer: str = "graph", seed: int = 0
) -> Tox21Splits:
    """Load Tox21 with a seeded random 80/10/10 split (MoleculeNet's random splitter).

    Labels are float32 with NaN where unlabelled, plus a boolean mask. Invalid SMILES are
    skipped (logged and counted in ``n_invalid``); split indices refer to the valid molecules.
    Featurised data are cached in memory per (file, featurizer). `csv_path` defaults to
    ``default_data_dir()/tox21/tox21.csv``.
    """
    if featurizer not in ("graph", "morgan"):
        raise ValueError(f"featurizer must be 'graph' or 'morgan', got {featurizer!r}")
    path = resolve_file(csv_path, "tox21", "tox21.csv")
    data = _featurize(path, featurizer)
    train_idx, val_idx, test_idx = random_split_indices(
        len(data.labels), TOX21_SPLIT_FRACTIONS, seed
    )
    features = data.fingerprints if featurizer == "morgan" else data.graphs
    if features is None:
        raise RuntimeError(f"Tox21 featurizer {featurizer!r} produced no features")
    full: Dataset = (TensorDataset(features, data.labels, data.mask)
                     if featurizer == "morgan" else features)
    indices = {"train": train_idx, "val": val_idx, "test": test_idx}
    return Tox21Splits(
        train=Subset(full, train_idx.tolist()),
        val=Subset(full, val_idx.tolist()),
        test=Subset(full, test_idx.tolist()),
        tasks=TOX21_TASKS,
        featurizer=featurizer,
        n_invalid=data.n_invalid,
        featurize_seconds=data.seconds,
        indices=indices,
    )


# ------------------------------------------------------------------------------ loss + metric


def masked_bce_with_logits(
    logits: Tensor, labels: Tensor, mask: Tensor, pos_weight: Tensor | None = None
) -> Tensor:
    """Binary cross-entropy averaged over the labelled entries only (NaN labels are fine).

    Returns 0 (with a gradient path) when nothing is labelled.
    """
    mask = mask.to(torch.bool)
    safe = torch.where(mask, labels, torch.zeros_like(labels)).to(logits.dtype)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, safe, reduction="none", pos_weight=pos_weight
    )
    m = mask.to(logits.dtype)
    return (loss * m).sum() / m.sum().clamp_min(1.0)


def per_task_roc_auc(logits: Tensor, labels: Tensor, mask: Tensor) -> list[float]:
    """ROC-AUC of each task over its labelled entries; NaN for tasks with one class only."""
    metrics = require("sklearn.metrics", "ROC-AUC")
    s = logits.detach().float().cpu().numpy()
    y = labels.detach().float().cpu().numpy()
    m = mask.detach().bool().cpu().numpy()
    out = []
    for t in range(s.shape[1]):
        yt = y[m[:, t], t]
        if len(np.unique(yt)) < 2:
            out.append(math.nan)
            continue
        out.append(float(metrics.roc_auc_score(yt, s[m[:, t], t])))  # type: ignore[attr-defined]
    return out


def mean_roc_auc(logits: Tensor, labels: Tensor, mask: Tensor) -> float:
    """Mean ROC-AUC over tasks, skipping tasks whose labelled entries have one class only.

    NaN (with a logged warning) if no task can be scored.
    """
    aucs = [a for a in per_task_roc_auc(logits, labels, mask) if not math.isnan(a)]
    if not aucs:
        logger.warning("mean_roc_auc: no task has both classes among its labelled entries")
        return math.nan
    return float(np.mean(aucs))
