"""Where the experiment data live."""

import pytest

from perforate_experiments.data.paths import default_data_dir


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PERFORATE_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv("PERFORATE_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="PERFORATE_DATA"):
        default_data_dir()
    monkeypatch.delenv("PERFORATE_DATA")
    try:
        found = default_data_dir()
    except FileNotFoundError as exc:
        assert "shared/data" in str(exc)
        pytest.skip("no ../shared/data beside this checkout")
    assert found.name == "data" and found.parent.name == "shared"
