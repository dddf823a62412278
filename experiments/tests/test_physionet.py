import io
import math
import tarfile

import numpy as np
import pytest
import torch

from perforate_experiments.data import physionet as pn
from perforate_experiments.data.paths import default_data_dir
from perforate_experiments.data.physionet import (
    NUM_STATIC_FEATURES,
    PHYSIONET_VARIABLES,
    STATIC_FEATURES,
    PhysioNetDataset,
    PhysioNetNormalizer,
    collate_physionet,
    load_physionet,
    load_physionet_splits,
    physionet_splits,
)

V = PHYSIONET_VARIABLES.index
PATIENTS = {
    "1003": "00:00,RecordID,1003\n00:00,Age,40\n00:00,Gender,1\n00:00,Height,180\n",
    "1001": """00:00,RecordID,1001
00:00,Age,54
00:00,Gender,0
00:00,Height,-1
00:00,ICUType,4
00:00,Weight,80
00:00,HR,70
00:30,HR,80
00:30,HR,90
00:30,Temp,37
01:00,Weight,81
01:00,DiasABP,-1
24:00,,1.5
24:00,Foo,3
48:00,pH,7.4
""",
    "1004": "00:00,RecordID,1004\n00:00,Age,33\n01:00,HR,60\n",
    "1002": """00:00,RecordID,1002
00:00,Age,70
00:00,Age,99
00:00,Gender,1
00:00,Height,170
00:00,Weight,60
02:00,HR,100
03:00,Temp,38
""",
}
OUTCOMES = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
OUTCOMES += "1001,1,1,5,-1,1\n1002,1,1,5,-1,0\n1003,1,1,5,-1,0\n9999,1,1,5,-1,1\n"


def _add(tf, name, text):
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def root(tmp_path):
    d = tmp_path / "physionet2012"
    d.mkdir()
    with tarfile.open(d / "set-a.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("set-a")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
        for rid, body in PATIENTS.items():
            _add(tf, f"set-a/{rid}.txt", "Time,Parameter,Value\n" + body)
    (d / "Outcomes-a.txt").write_text(OUTCOMES)
    return d


def test_parse_synthetic(root, tmp_path):
    rec = load_physionet(root, "a", cache_dir=tmp_path / "cache")
    assert rec.record_ids.tolist() == [1001, 1002, 1003]  # sorted; 1004 has no outcome
    assert rec.labels.tolist() == [1, 0, 0]
    assert rec.lengths().tolist() == [4, 2, 0]
    times, values, mask = rec.patient(0)
    np.testing.assert_allclose(times, [0, 0.5 / 48, 1 / 48, 1.0], rtol=1e-6)
    expected = np.zeros((4, len(PHYSIONET_VARIABLES)), np.float32)
    expected[0, V("HR")] = 70
    expected[1, V("HR")] = 85  # two measurements at 00:30 averaged
    expected[1, V("Temp")] = 37
    expected[2, V("Weight")] = 81
    expected[3, V("pH")] = 7.4
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    np.testing.assert_array_equal(mask, expected != 0)
    np.testing.assert_allclose(rec.static[0], [54, 0, np.nan, 4, 80])
    np.testing.assert_allclose(rec.static[1], [70, 1, 170, np.nan, 60])  # first Age wins
    np.testing.assert_allclose(rec.static[2], [40, 1, 180, np.nan, np.nan])
    assert rec.stats["empty_parameter"] == 1 and rec.stats["missing_value"] == 1
    assert rec.stats["unknown_parameter_Foo"] == 1 and rec.stats["duplicate_static_Age"] == 1
    assert rec.stats["no_outcome"] == 1 and rec.stats["static_missing"] == 1


def test_cache(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_physionet(root, "a", cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("should have been served from the cache")

    monkeypatch.setattr(pn, "parse_physionet_archive", boom)
    again = load_physionet(root, "a", cache_dir=cache)
    for field in ("record_ids", "times", "values", "mask", "offsets", "labels"):
        np.testing.assert_array_equal(getattr(again, field), getattr(first, field))
    np.testing.assert_array_equal(again.static, first.static)
    assert again.stats == first.stats
    with pytest.raises(AssertionError, match="cache"):
        load_physionet(root, "a", cache_dir=cache, limit=2)  # cached separately


def test_limit_and_errors(root, tmp_path):
    rec = load_physionet(root, "a", cache_dir=tmp_path, limit=2, use_cache=False)
    assert rec.record_ids.tolist() == [1001, 1003]
    assert not list(tmp_path.glob("*.npz"))
    with pytest.raises(FileNotFoundError, match=r"set-c\.tar\.gz"):
        load_physionet(root, "c", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="set_name"):
        load_physionet(root, "d")


def test_normalizer_and_collate(root, tmp_path):
    rec = load_physionet(root, "a", use_cache=False)
    norm = PhysioNetNormalizer.fit(rec, np.array([0, 1]))
    assert norm.mean[V("HR")] == pytest.approx(85)
    assert norm.std[V("HR")] == pytest.approx(math.sqrt(150))
    assert (norm.mean[V("Temp")], norm.std[V("Temp")]) == pytest.approx((37.5, 0.5))
    assert (norm.mean[V("pH")], norm.std[V("pH")]) == pytest.approx((7.4, 1.0))  # one value
    assert (norm.mean[V("ALP")], norm.std[V("ALP")]) == (0.0, 1.0)  # never observed
    np.testing.assert_allclose(norm.static_mean, [62, 170, 70])
    np.testing.assert_allclose(norm.static_std, [8, 1, 10])

    ds = PhysioNetDataset(rec, None, norm)
    item = ds[0]
    assert item["static"].shape == (NUM_STATIC_FEATURES,)
    feats = dict(zip(STATIC_FEATURES, item["static"].tolist(), strict=True))
    assert feats["Age"] == pytest.approx(-1) and feats["Weight"] == pytest.approx(1)
    assert feats["Height"] == 0 and feats["Height_missing"] == 1 and feats["Age_missing"] == 0
    assert feats["ICUType_4"] == 1 and feats["ICUType_missing"] == 0
    assert dict(zip(STATIC_FEATURES, ds[1]["static"].tolist(), strict=True))["ICUType_missing"]

    batch = collate_physionet([ds[i] for i in range(3)])
    assert batch["times"].shape == (3, 4) and batch["values"].shape == (3, 4, 37)
    assert batch["mask"].shape == (3, 4, 37) and batch["mask"].dtype == torch.float32
    assert batch["lengths"].tolist() == [4, 2, 0]
    assert batch["label"].tolist() == [1, 0, 0] and batch["static"].shape == (3, 13)
    assert batch["mask"][1, 2:].sum() == 0 and batch["mask"][2].sum() == 0
    assert batch["times"][1, 2:].sum() == 0
    assert batch["values"][0, 0, V("HR")] == pytest.approx(-15 / math.sqrt(150), rel=1e-5)
    assert batch["values"][0, 3, V("pH")] == pytest.approx(0)
    assert torch.all(batch["values"][batch["mask"] == 0] == 0)
    assert batch["record_id"].tolist() == [1001, 1002, 1003]


def test_splits_helper():
    tr, va, te = physionet_splits(1000, seed=0)
    assert (len(tr), len(va), len(te)) == (600, 200, 200)
    assert len(np.unique(np.concatenate([tr, va, te]))) == 1000
    tr2, _, _ = physionet_splits(1000, seed=0)
    tr3, _, _ = physionet_splits(1000, seed=1)
    np.testing.assert_array_equal(tr, tr2)
    assert not np.array_equal(tr, tr3)
    labels = (np.arange(1000) % 7 == 0).astype(np.float32)
    parts = physionet_splits(1000, seed=0, labels=labels)
    assert len(np.unique(np.concatenate(parts))) == 1000
    for p in parts:
        assert labels[p].mean() == pytest.approx(labels.mean(), abs=0.01)


@pytest.fixture(scope="module")
def real_root():
    try:
        d = default_data_dir() / "physionet2012"
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    if not (d / "set-a.tar.gz").is_file():
        pytest.skip(f"{d}/set-a.tar.gz missing")
    return d


def test_real_subset(real_root, tmp_path):
    s = load_physionet_splits(real_root, seed=0, cache_dir=tmp_path, limit=200)
    assert (len(s.train), len(s.val), len(s.test), len(s.test_c)) == (120, 40, 40, 200)
    ids = [set(d.records.record_ids[d.indices].tolist()) for d in (s.train, s.val, s.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    rec = s.train.records
    assert len(rec) == 200 and rec.values.shape[1] == 37
    assert set(np.unique(rec.labels).tolist()) <= {0.0, 1.0}
    assert rec.times.min() >= 0 and rec.times.max() <= 1
    for i in range(len(rec)):
        assert np.all(np.diff(rec.patient(i)[0]) > 0)
    assert np.all(rec.values[~rec.mask] == 0) and rec.mask.any(1).all()
    assert np.isnan(rec.static[:, 3]).all()  # set-a carries no ICUType
    icu_c = s.test_c.normalizer.static_features(s.test_c.records.static)[:, -4:]
    assert np.all(icu_c.sum(1) == 1)  # set-c does

    # normalised observed values on the training split: mean 0, std 1 per variable
    batch = collate_physionet([s.train[i] for i in range(len(s.train))])
    m = batch["mask"].bool()
    for v in range(37):
        obs = batch["values"][..., v][m[..., v]]
        if len(obs) > 1 and obs.std() > 0:
            assert abs(float(obs.mean())) < 1e-3, PHYSIONET_VARIABLES[v]
            assert abs(float(obs.std(unbiased=False)) - 1) < 1e-3, PHYSIONET_VARIABLES[v]
    assert batch["values"].shape[1] == int(batch["lengths"].max())
    assert torch.all(batch["mask"].sum((1, 2)) > 0)
