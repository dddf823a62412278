"""Every zoo model (tests/zoo.py) through the shared checks."""

from pathlib import Path

import pytest

import zoo

MODELS = pytest.mark.parametrize("spec", zoo.MODELS, ids=[m.name for m in zoo.MODELS])


@MODELS
def test_zero_dendrites_equal_the_original(spec: zoo.ZooModel) -> None:
    zoo.check_zero_dendrites_match(spec)


@MODELS
def test_dendrite_cycle(spec: zoo.ZooModel) -> None:
    zoo.check_dendrite_cycle(spec)


@MODELS
def test_save_load(spec: zoo.ZooModel, tmp_path: Path) -> None:
    zoo.check_save_load(spec, tmp_path)


@MODELS
def test_export(spec: zoo.ZooModel) -> None:
    zoo.check_export(spec)


@MODELS
def test_parameter_count(spec: zoo.ZooModel) -> None:
    zoo.check_parameter_count(spec)
