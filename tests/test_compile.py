"""``torch.compile`` of perforated models: the graph breaks docs/training.md ("torch.compile")
states, and compiled gradients equal eager ones. Tiny models: compiling is slow on 2 cores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate as pf


def _compile_unavailable() -> str:
    """Why torch.compile cannot run here ("" where it can)."""
    try:
        import torch._dynamo
    except Exception as exc:  # any import failure means no compiler
        return f"torch._dynamo does not import: {exc}"
    supported = getattr(torch._dynamo, "is_dynamo_supported", lambda: True)
    return "" if supported() else "torch.compile is not supported on this platform/Python"


pytestmark = pytest.mark.skipif(bool(_compile_unavailable()), reason=_compile_unavailable()
                                or "torch.compile is available")


def _breaks(model: nn.Module, x: torch.Tensor) -> int:
    import torch._dynamo

    torch._dynamo.reset()
    return torch._dynamo.explain(model)(x).graph_break_count


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def test_graph_breaks_are_at_most_one_per_layer_in_a_dendrite_phase_and_none_after() -> None:
    """The paper's recipe (frozen tanh sets, candidates trained through the user's backward):
    a dendrite phase's forward breaks at most once per wrapped layer (`ErrorTap`), a neuron
    phase's not at all (docs/training.md)."""
    torch.manual_seed(0)
    model = pf.perforate(_mlp(), pf.PerforationConfig.paper(seed=0, candidates=2))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    layers = len(model.dendrite_layers())
    model.begin_dendrite_phase()
    assert _breaks(model, x) <= layers
    nn.functional.cross_entropy(model(x), y).backward()
    model.candidate_optimizer().step()
    model.end_epoch()
    model.end_dendrite_phase()
    assert model.num_dendrites == 1
    assert _breaks(model, x) == 0
    model.begin_dendrite_phase()  # the candidates now take the installed set's output
    assert _breaks(model, x) <= layers


def test_a_compiled_neuron_step_with_trained_sets_gives_eager_gradients() -> None:
    """The default's trained set (`DendriteTerm`) compiles into the graph, forward and
    backward, and gives eager's loss and gradients."""
    torch.manual_seed(0)
    model = pf.perforate(_mlp(), pf.PerforationConfig(seed=0))
    model.grow()
    with torch.no_grad():
        for layer in model.dendrite_layers().values():
            layer.output_weight.normal_()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    assert _breaks(model, x) == 0

    def grads(forward: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}

    eager_loss, eager = grads(model)
    loss, compiled = grads(torch.compile(model, backend="aot_eager"))
    torch.testing.assert_close(loss, eager_loss)
    assert compiled.keys() == eager.keys() and any("output_weight" in n for n in eager)
    for name, grad in eager.items():
        torch.testing.assert_close(compiled[name], grad, rtol=1e-5, atol=1e-6, msg=name)
