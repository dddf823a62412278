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
def test_state_dict_into_a_fresh_model(spec: zoo.ZooModel) -> None:
    zoo.check_state_dict_into_fresh_model(spec)


@MODELS
def test_export(spec: zoo.ZooModel) -> None:
    zoo.check_export(spec)


@MODELS
@pytest.mark.filterwarnings("ignore::FutureWarning")  # from torch.onnx's internals
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx(spec: zoo.ZooModel, tmp_path: Path) -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    if spec.onnx_skip:
        pytest.skip(spec.onnx_skip)
    zoo.check_onnx(spec, tmp_path)


@pytest.mark.parametrize("spec", [m for m in zoo.MODELS if m.sample_mask is not None],
                         ids=lambda m: m.name)
def test_sample_mask_leaves_padding_out(spec: zoo.ZooModel) -> None:
    zoo.check_sample_mask(spec)


@MODELS
def test_untrained_recipe(spec: zoo.ZooModel) -> None:
    zoo.check_untrained_recipe(spec)


@MODELS
def test_parameter_count(spec: zoo.ZooModel) -> None:
    zoo.check_parameter_count(spec)
