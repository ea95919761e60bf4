"""torch.compile of the Adam phase's loss: the auto rule, the same numbers as eager where it
compiles, and the eager fallback where it does not."""

from __future__ import annotations

import gc
import logging
import shutil

import pytest
import torch

from pdesampler.compiling import (
    COMPILE_MIN_SECONDS,
    COMPILE_MIN_STEPS,
    COMPILE_SECONDS_PER_DIM,
    CompiledOrEager,
    should_compile,
)
from pdesampler.losses import logce, logfp
from pdesampler.ops import Hutchinson
from pdesampler.targets import Gaussian
from pdesampler.train import train

NET = {"width": 8, "depth": 1}
CPU = torch.device("cpu")
#: inductor builds C++ kernels on CPU; without a compiler everything runs eagerly (after a warning)
needs_cxx = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile on CPU needs a C++ compiler",
)


def batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return 2 * torch.randn(n, 2, generator=gen), torch.rand(n, generator=gen)


def loss_and_grads(residual, loss_fn) -> tuple[float, list[torch.Tensor]]:
    residual.zero_grad(set_to_none=True)
    loss, _ = loss_fn(*batch())
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in residual.parameters()]


def test_auto_rule() -> None:
    assert should_compile(True, CPU, 1, None) and not should_compile(False, CPU, 10**6, None)
    assert should_compile("auto", CPU, COMPILE_MIN_STEPS, None)
    assert not should_compile("auto", CPU, COMPILE_MIN_STEPS - 1, None)
    # a time budget decides, whatever the step cap (suites set steps=1e6)
    assert should_compile("auto", CPU, 10**6, COMPILE_MIN_SECONDS)
    assert not should_compile("auto", CPU, 10**6, COMPILE_MIN_SECONDS / 2)
    # at d = 50 the floor is 10 s per dimension (a cold compilation took 118 s of a 150 s budget)
    assert should_compile("auto", CPU, 10**6, COMPILE_MIN_SECONDS, dim=8)
    assert not should_compile("auto", CPU, 10**6, COMPILE_MIN_SECONDS, dim=50)
    assert should_compile("auto", CPU, 10**6, COMPILE_SECONDS_PER_DIM * 50, dim=50)
    assert not should_compile("auto", torch.device("cuda"), 10**6, None)
    with pytest.raises(ValueError, match=r"optim\.compile must be true, false or 'auto'"):
        should_compile("yes", CPU, 10, None)


@needs_cxx
def test_compiled_logce_matches_eager() -> None:
    torch.manual_seed(0)
    residual = logce(Gaussian(mean=0.5, std=0.8, dim=2), net=NET)
    eager_loss, eager_grads = loss_and_grads(residual, residual.loss)
    compiled = CompiledOrEager(residual.loss, "logce")
    loss, grads = loss_and_grads(residual, compiled)
    assert compiled.compiled, "logCE's residual should compile"
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@needs_cxx
@pytest.mark.parametrize("make", [logfp, logce], ids=["logfp", "logce_hutchinson"])
def test_compiled_jets_match_eager(make) -> None:
    """Under torch.compile the Laplacian (logFP) and the Hutchinson divergence (logCE) are taken
    reverse-over-reverse: the same numbers, and the same probe stream, as eagerly."""
    torch.manual_seed(0)
    residual = make(Gaussian(mean=0.5, std=0.8, dim=3), net=NET)
    with torch.no_grad():  # away from the zero-initialised output layer
        for p in residual.parameters():
            p.add_(0.3 * torch.randn_like(p))
    initial = residual.estimator
    x, t = 2 * torch.randn(64, 3), torch.rand(64)
    values = {}
    for mode in ("eager", "compiled"):
        if make is logce:
            residual.estimator = Hutchinson(generator=torch.Generator().manual_seed(7))
        loss_fn = residual.loss if mode == "eager" else CompiledOrEager(residual.loss, mode)
        values[mode] = [float(loss_fn(x, t)[0].detach()) for _ in range(3)]
        if mode == "compiled":
            assert loss_fn.compiled
    residual.estimator = initial
    assert values["compiled"] == pytest.approx(values["eager"], rel=1e-5)
    if make is logce:  # fresh probes on every call
        assert len(set(values["eager"])) == 3


def forward_over_reverse_laplacian(x: torch.Tensor) -> torch.Tensor:
    """sum_i d^2/dx_i^2 of sum(sin x) per point by jvp of grad, which TorchDynamo (torch 2.13)
    cannot trace: a stand-in for a custom residual that does not compile."""

    def f(y: torch.Tensor) -> torch.Tensor:
        return torch.sin(y).sum()

    def lap(y: torch.Tensor) -> torch.Tensor:
        def along(v: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(torch.func.grad(f), (y,), (v,))[1] @ v

        return torch.func.vmap(along)(torch.eye(y.shape[-1])).sum()

    return torch.func.vmap(lap)(x).sum()


def test_uncompilable_function_falls_back_to_eager(caplog) -> None:
    x = torch.randn(16, 2)
    compiled = CompiledOrEager(forward_over_reverse_laplacian, "jvp of grad")
    with caplog.at_level(logging.WARNING, logger="pdesampler.compiling"):
        first, second = compiled(x), compiled(x)  # warned once, then eager without retrying
    assert not compiled.compiled
    assert len([r for r in caplog.records if "running it eagerly" in r.message]) == 1
    expected = -torch.sin(x).sum()
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


def dispatch_key_sets() -> tuple[int, int]:
    return (
        torch._C._dispatch_tls_local_include_set().raw_repr(),
        torch._C._dispatch_tls_local_exclude_set().raw_repr(),
    )


def test_a_failed_compile_leaves_nothing_for_the_garbage_collector_to_break() -> None:
    """A failed TorchDynamo trace leaves dispatch-key guards in reference cycles; destroyed by a
    later garbage collection, each would put back the trace's key sets, and a ``vmap`` running
    then (a sampler's, in the next test) would fail. After the fallback a collection inside a
    ``vmap`` changes nothing."""
    before = dispatch_key_sets()
    compiled = CompiledOrEager(forward_over_reverse_laplacian, "jvp of grad")
    compiled(torch.randn(16, 2))
    assert not compiled.compiled
    assert dispatch_key_sets() == before

    def collect_then_double(v: torch.Tensor) -> torch.Tensor:
        gc.collect()
        return 2 * v.to(torch.float64).expand(3)

    torch.testing.assert_close(
        torch.func.vmap(collect_then_double)(torch.ones(4)), torch.full((4, 3), 2.0).double()
    )
    assert dispatch_key_sets() == before


def test_fallback_exits_the_forward_ad_level_a_failed_compile_left() -> None:
    """Inductor (torch 2.13) can fail inside a traced ``jvp`` after entering forward-mode AD's
    dual level (MW 50/5/2 logFP-anneal); the eager fallback must still run its own ``jvp``, and
    nothing stays entered after it."""

    def sin_slope(x: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(torch.sin, (x,), (torch.ones_like(x),))[1].sum()

    def fails_inside_a_jvp(*args):
        torch._C._enter_dual_level()  # what the failed compilation left entered
        raise RuntimeError("INTERNAL ASSERT FAILED: has_fw_view")

    compiled = CompiledOrEager(sin_slope, "jvp")
    compiled._compiled = fails_inside_a_jvp
    x = torch.randn(5)
    torch.testing.assert_close(compiled(x), torch.cos(x).sum())
    assert not compiled.compiled
    with torch.autograd.forward_ad.dual_level() as level:
        assert level == 0  # the leaked level was exited


def test_a_transform_left_active_by_a_failed_compile_stops_with_a_message() -> None:
    def fails_inside_a_vmap(*args):
        torch._C._functorch._vmap_increment_nesting(3, "error")  # never decremented
        raise RuntimeError("compilation failed inside vmap")

    compiled = CompiledOrEager(torch.sin, "sin")
    compiled._compiled = fails_inside_a_vmap
    try:
        with pytest.raises(
            RuntimeError, match=r"left a torch.func transform active.*compile=false"
        ):
            compiled(torch.ones(3))
    finally:
        torch._C._functorch._vmap_decrement_nesting()
    assert torch._C._functorch.maybe_current_level() is None


def test_the_fallback_warning_gives_the_compilers_reason(caplog) -> None:
    """Inductor's errors read "backend='inductor' raised:" on the first line and the reason on
    the next: the warning carries both."""

    def fails_to_compile(*args):
        raise RuntimeError("backend='inductor' raised:\nCppCompileError: C++ compile error")

    compiled = CompiledOrEager(torch.sin, "sin")
    compiled._compiled = fails_to_compile
    with caplog.at_level(logging.WARNING, logger="pdesampler.compiling"):
        assert torch.equal(compiled(torch.ones(3)), torch.sin(torch.ones(3)))
    (record,) = [r for r in caplog.records if "running it eagerly" in r.message]
    assert "raised: CppCompileError: C++ compile error" in record.getMessage()


def test_error_of_the_function_itself_is_raised() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        return x @ torch.ones(3)  # shape error, eager or compiled

    with pytest.raises(RuntimeError):
        CompiledOrEager(broken, "broken")(torch.ones(2))


def test_train_with_compile_follows_eager() -> None:
    histories = []
    for setting in (False, True):
        torch.manual_seed(0)
        residual = logce(Gaussian(mean=0.5, std=0.8, dim=2), net=NET)
        out = train(
            residual,
            adam={"steps": 20, "log_every": 5},
            batch_size=64,
            seed=1,
            progress=False,
            compile=setting,
        )
        histories.append([row["loss"] for row in out.adam.history])
    assert histories[1] == pytest.approx(histories[0], rel=1e-3)
