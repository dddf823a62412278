"""training.png's figure: what each panel shows, checked on the matplotlib objects."""

from __future__ import annotations

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pytest

from perforate.training.plotting import plot_training, training_figure
from test_artifacts import png_size, scripted_run


def x_extent(patch) -> tuple[float, float]:
    """The x range (data coordinates) a patch covers (axvspan: Polygon or Rectangle)."""
    xy = patch.get_patch_transform().transform(patch.get_path().vertices)
    return float(xy[:, 0].min()), float(xy[:, 0].max())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tracker, _ = scripted_run(tmp_path_factory.mktemp("run"), plot=False)
    fig = training_figure(tracker, title="scripted")
    yield tracker, fig
    plt.close(fig)


def test_panel_1_scores_per_epoch_with_dendrite_phases_and_installs(run):
    tracker, fig = run
    ax1, _ax2, _ax3, twin = fig.axes
    assert ax1.get_title() == "scripted"
    lines = {line.get_label(): line for line in ax1.lines}
    for key in ("train", "val", "test"):
        assert list(lines[key].get_xdata()) == [r["epoch"] for r in tracker.records.history]
        assert list(lines[key].get_ydata()) == [r[key] for r in tracker.records.history]
    extra = {line.get_label(): line for line in twin.lines}
    assert list(extra["val_acc"].get_ydata()) == [r["val_acc"] for r in tracker.records.history]
    # dendrite epochs 5-6 and 11-12 shaded, the installs (after epochs 6 and 12) marked
    assert [x_extent(p) for p in ax1.patches] == [(4.5, 6.5), (10.5, 12.5)]
    installs = [line for line in ax1.lines if line.get_label().startswith("_")]
    assert sorted(float(line.get_xdata()[0]) for line in installs) == [6.5, 12.5]
    assert sorted(t.get_text() for t in ax1.texts) == [" set 1", " set 2"]
    # the final model: the kept cycle's best epoch and score
    (star,) = ax1.collections
    assert star.get_offsets().tolist() == [[8.0, 0.5]]


def test_panel_2_correlation_per_layer_per_set(run):
    tracker, fig = run
    ax2 = fig.axes[1]
    lines = {line.get_label(): line for line in ax2.lines}
    assert set(lines) == {"0 mean", "0 max", "2 mean", "2 max"}
    for layer in ("0", "2"):
        for stat, key in (("mean", "mean_corr"), ("max", "max_corr")):
            line = lines[f"{layer} {stat}"]
            assert list(line.get_xdata()) == [1, 2]
            assert list(line.get_ydata()) == [p["layers"][layer][key]
                                              for p in tracker.records.dendrite_phases]


def test_panel_3_parameters_per_architecture_kept_one_in_red(run):
    tracker, fig = run
    bars = fig.axes[2].patches
    assert [b.get_height() for b in bars] == [a["params"] for a in tracker.records.architectures]
    red = mcolors.to_rgba("tab:red")
    assert [b.get_facecolor() == red for b in bars] == [False, True, False]


def test_no_extras_no_twin_axis_and_the_png(tmp_path):
    tracker, _ = scripted_run(tmp_path / "run", add_dendrites=False, plot=False)
    tracker.records.extra_names.clear()
    fig = training_figure(tracker)
    try:
        assert len(fig.axes) == 3 and len(fig.axes[0].patches) == 0  # no dendrite phase
        restarts = [r["epoch"] + 0.5 for r in tracker.records.history if r["event"] == "restart"]
        assert restarts and [t.get_position()[0] for t in fig.axes[0].texts] == restarts
        assert fig.axes[1].texts[0].get_text() == "no dendrite phase"
    finally:
        plt.close(fig)
    out = plot_training(tracker, tmp_path / "training.png")
    assert png_size(out) == (900, 1100)
