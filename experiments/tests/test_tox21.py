import csv
import math
import time

import numpy as np
import pytest
import torch

from perforate_experiments.data.paths import default_data_dir
from perforate_experiments.data.tox21 import (
    ATOM_ELEMENTS,
    ATOM_FEATURE_DIM,
    BOND_FEATURE_DIM,
    TOX21_TASKS,
    GraphBatch,
    MolGraph,
    collate_graphs,
    load_tox21,
    masked_bce_with_logits,
    mean_roc_auc,
    morgan_fingerprints,
    parse_smiles,
    per_task_roc_auc,
    smiles_to_graph,
)

pytest.importorskip("rdkit")

# Column offsets of the atom feature blocks (see tox21.py).
E = len(ATOM_ELEMENTS) + 1
DEG, CHG, HS = E, E + 7, E + 13
AROM, HYB, RING = E + 18, E + 19, E + 25


@pytest.fixture(scope="module")
def csv_path():
    try:
        path = default_data_dir() / "tox21" / "tox21.csv"
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def test_feature_dims():
    assert ATOM_FEATURE_DIM == RING + 1 == 49
    assert BOND_FEATURE_DIM == 7


def test_ethanol_graph():
    g = smiles_to_graph("CCO")
    assert g.x.shape == (3, ATOM_FEATURE_DIM) and g.x.dtype == torch.float32
    elem = g.x[:, :E].argmax(1).tolist()
    assert [ATOM_ELEMENTS[i] for i in elem] == ["C", "C", "O"]
    assert g.x[:, DEG : DEG + 7].argmax(1).tolist() == [1, 2, 1]
    assert g.x[:, HS : HS + 5].argmax(1).tolist() == [3, 2, 1]
    assert g.x[:, CHG : CHG + 6].argmax(1).tolist() == [2, 2, 2]  # charge 0
    assert g.x[:, AROM].sum() == 0 and g.x[:, RING].sum() == 0
    assert g.x[:, HYB : HYB + 6].argmax(1).tolist() == [2, 2, 2]  # SP3
    assert torch.all(g.x.sum(1) == 5)  # five one-hot blocks, flags off
    assert g.edge_index.tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]]
    assert g.edge_attr.shape == (4, BOND_FEATURE_DIM)
    assert torch.all(g.edge_attr[:, 0] == 1) and g.edge_attr[:, 1:].sum() == 0


def test_benzene_and_ions():
    g = smiles_to_graph("c1ccccc1")
    assert g.num_atoms == 6 and g.edge_index.shape == (2, 12)
    assert torch.all(g.x[:, AROM] == 1) and torch.all(g.x[:, RING] == 1)
    assert torch.all(g.edge_attr[:, 3] == 1)  # aromatic
    assert torch.all(g.edge_attr[:, 5:] == 1)  # conjugated, in ring
    ion = smiles_to_graph("[NH4+]")
    assert ion.num_atoms == 1 and ion.edge_index.shape == (2, 0)
    assert ion.edge_attr.shape == (0, BOND_FEATURE_DIM)
    assert ion.x[0, CHG : CHG + 6].argmax() == 3  # +1
    assert ion.x[0, HS : HS + 5].argmax() == 4  # >= 4 hydrogens
    mol = smiles_to_graph("[Au]")
    assert mol.x[0, len(ATOM_ELEMENTS)] == 1  # "other" element


def test_invalid_smiles_skipped(caplog):
    assert smiles_to_graph("C1CC") is None
    mols, valid = parse_smiles(["CC", "not a smiles", "", "O"])
    assert valid == [0, 3] and len(mols) == 2
    assert "invalid SMILES" in caplog.text


def test_collate_offsets():
    graphs = [smiles_to_graph(s) for s in ("CCO", "[Na+]", "c1ccccc1")]
    y = [torch.tensor([1.0, math.nan]), torch.tensor([0.0, 1.0]), torch.tensor([math.nan, 0.0])]
    items = [(g, yy, ~torch.isnan(yy)) for g, yy in zip(graphs, y, strict=True)]
    b = collate_graphs(items)
    assert isinstance(b, GraphBatch) and b.num_graphs == 3
    assert b.x.shape == (10, ATOM_FEATURE_DIM) and b.edge_attr.shape == (16, BOND_FEATURE_DIM)
    assert b.batch.tolist() == [0, 0, 0, 1] + [2] * 6
    assert b.edge_index[:, :4].tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]]
    assert torch.equal(b.edge_index[:, 4:], graphs[2].edge_index + 4)
    assert b.y.shape == (3, 2) and b.mask.tolist() == [[True, False], [True, True], [False, True]]
    bare = collate_graphs(graphs)
    assert bare.y is None and torch.equal(bare.edge_index, b.edge_index)
    moved = b.to("cpu")
    assert moved.num_graphs == 3 and torch.equal(moved.x, b.x)


def test_morgan_fingerprints(capfd):
    mols, _ = parse_smiles(["C", "CCO", "CCO", "c1ccccc1"])
    fp = morgan_fingerprints(mols)
    assert fp.shape == (4, 2048) and fp.dtype == np.float32
    assert set(np.unique(fp)) <= {0.0, 1.0}
    assert fp[0].sum() == 1  # methane: a single environment
    np.testing.assert_array_equal(fp[1], fp[2])
    assert not np.array_equal(fp[1], fp[3])
    assert "DEPRECAT" not in capfd.readouterr().err.upper()


def _csv_counts(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    pos = {t: sum(r[t] == "1" for r in rows) for t in TOX21_TASKS}
    lab = {t: sum(r[t] != "" for r in rows) for t in TOX21_TASKS}
    return len(rows), pos, lab


def _stack(ds):
    ys = torch.stack([ds[i][1] for i in range(len(ds))])
    ms = torch.stack([ds[i][2] for i in range(len(ds))])
    return ys, ms


def test_load_graph_splits(csv_path):
    s = load_tox21(csv_path, featurizer="graph", seed=0)
    n_rows, pos, lab = _csv_counts(csv_path)
    n_valid = n_rows - s.n_invalid
    assert s.tasks == TOX21_TASKS and len(s.tasks) == 12
    assert 0 <= s.n_invalid < 20
    sizes = [len(s.train), len(s.val), len(s.test)]
    n_tr, n_va = int(0.8 * n_valid), int(0.1 * n_valid)
    assert sizes == [n_tr, n_va, n_valid - n_tr - n_va]
    idx = np.concatenate(list(s.indices.values()))
    assert len(np.unique(idx)) == n_valid and idx.min() == 0 and idx.max() == n_valid - 1
    g, y, m = s.train[0]
    assert isinstance(g, MolGraph) and y.shape == (12,) and m.dtype == torch.bool
    ys, ms = zip(*(_stack(d) for d in s), strict=True)
    ys, ms = torch.cat(ys), torch.cat(ms)
    assert torch.equal(ms, ~torch.isnan(ys))
    assert set(torch.unique(ys[ms]).tolist()) == {0.0, 1.0}
    for t, task in enumerate(TOX21_TASKS):
        # invalid molecules can only remove labels
        assert lab[task] - s.n_invalid <= int(ms[:, t].sum()) <= lab[task]
        assert pos[task] - s.n_invalid <= int(ys[ms[:, t], t].sum()) <= pos[task]
    batch = collate_graphs([s.train[i] for i in range(32)])
    assert batch.num_graphs == 32 and batch.y.shape == (32, 12)
    assert int(batch.batch.max()) == 31 and batch.edge_index.max() < batch.x.shape[0]


def test_split_seeds_and_cache(csv_path):
    a = load_tox21(csv_path, featurizer="graph", seed=0)
    start = time.perf_counter()
    b = load_tox21(csv_path, featurizer="graph", seed=0)
    c = load_tox21(csv_path, featurizer="graph", seed=1)
    assert time.perf_counter() - start < 1.0  # featurised once, cached in memory
    assert b.featurize_seconds == a.featurize_seconds
    np.testing.assert_array_equal(a.indices["test"], b.indices["test"])
    assert not np.array_equal(a.indices["test"], c.indices["test"])


def test_load_morgan(csv_path):
    g = load_tox21(csv_path, featurizer="graph", seed=2)
    s = load_tox21(csv_path, featurizer="morgan", seed=2)
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(s.indices[k], g.indices[k])
    x, y, m = s.train[0]
    assert m.dtype == torch.bool
    assert x.shape == (2048,) and x.dtype == torch.float32 and y.shape == (12,)
    torch.testing.assert_close(y, g.train[0][1], equal_nan=True)
    loader = torch.utils.data.DataLoader(s.train, batch_size=64)
    xb, yb, mb = next(iter(loader))
    assert yb.shape == (64, 12)
    assert xb.shape == (64, 2048) and mb.dtype == torch.bool
    with pytest.raises(ValueError, match="featurizer"):
        load_tox21(csv_path, featurizer="ecfp")


def test_masked_bce_hand_computed():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]], requires_grad=True)
    labels = torch.tensor([[1.0, math.nan], [0.0, 1.0]])
    mask = ~torch.isnan(labels)
    loss = masked_bce_with_logits(logits, labels, mask)
    expected = (math.log(2) + math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 1] == 0 and torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0] == pytest.approx((torch.sigmoid(torch.tensor(0.0)) - 1) / 3)
    none = masked_bce_with_logits(logits, labels, torch.zeros_like(mask))
    assert none.item() == 0


def test_roc_auc_hand_computed():
    logits = torch.tensor([[0.1, 0.0, 0.9], [0.4, 0.1, 0.1], [0.35, 0.2, 0.2], [0.8, 0.3, 0.3]])
    labels = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, math.nan], [1.0, 1.0, 0.0], [1, 1, 0]])
    mask = ~torch.isnan(labels)
    aucs = per_task_roc_auc(logits, labels, mask)
    assert aucs[0] == pytest.approx(0.75) and math.isnan(aucs[1]) and aucs[2] == pytest.approx(1)
    assert mean_roc_auc(logits, labels, mask) == pytest.approx(0.875)
    assert math.isnan(mean_roc_auc(logits[:, 1:2], labels[:, 1:2], mask[:, 1:2]))
