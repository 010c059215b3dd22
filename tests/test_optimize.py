"""optimize_for_inference: the chosen path is faithful, and bad requests are refused clearly."""
from __future__ import annotations

import pytest
import torch

from repvit import create_model, is_fused, reparameterize
from repvit.runtime.optimize import CUDAGraphRunner, InferenceModule, optimize_for_inference
from repvit.testing import random_eval_model


@pytest.fixture(scope="module")
def model():
    return random_eval_model("repvit_m0_6", bn_seed=3, num_classes=10, distillation=True)


def test_cpu_picks_a_faithful_measured_path(model):
    best = optimize_for_inference(model, "cpu", img_size=32, threads=1, rounds=1, iters=2,
                                  candidates=["eager", "eager-channels-last", "torchscript-frozen", "onnxruntime"])
    assert isinstance(best, InferenceModule) and best.path.startswith("fused+")
    assert not is_fused(model), "the caller's model must not be modified"
    report = best.report["candidates"]
    assert set(report) == {"eager", "eager-channels-last", "torchscript-frozen", "onnxruntime"}
    measured = {k: v for k, v in report.items() if "median_ms" in v}
    assert best.report["chosen"] == min(measured, key=lambda k: measured[k]["median_ms"])
    assert all(v["max_abs_diff"] <= 1e-4 for v in measured.values())
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(best(x), reparameterize(model)(x), atol=1e-4, rtol=0)


def test_cpu_without_measuring_takes_the_first_candidate(model):
    best = optimize_for_inference(model, "cpu", img_size=32, candidates=["eager-channels-last"], measure=False)
    assert best.path == "fused+eager-channels-last" and best.channels_last
    assert best(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unfaithful_requests_are_refused(model):
    with pytest.raises(ValueError, match="float32"):
        optimize_for_inference(model, "cpu", dtype=torch.float16, img_size=32)
    with pytest.raises(ValueError, match="dtype must be one of"):
        optimize_for_inference(model, "cpu", dtype="int4", img_size=32)
    with pytest.raises(ValueError, match="cuda"):
        optimize_for_inference(model, "cpu", cuda_graphs=True, img_size=32)
    with pytest.raises(ValueError, match="candidates"):
        optimize_for_inference(model, "cpu", candidates=["tensorrt"], img_size=32)
    with pytest.raises(ValueError, match="batch_size"):
        optimize_for_inference(model, "cpu", batch_size=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_requested_without_gpu_says_so(model):
    with pytest.raises(ValueError, match="CUDA is not available"):
        optimize_for_inference(model, "cuda", img_size=32)
    with pytest.raises(ValueError, match="CUDA tensors"):
        CUDAGraphRunner(reparameterize(model))(torch.randn(1, 3, 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_path_is_half_precision_and_close(model):
    best = optimize_for_inference(model, "cuda", img_size=64, batch_size=4, compile=False)
    assert best.dtype == torch.float16 and best.channels_last and best.cuda_graphs
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        want = reparameterize(model)(x)
        got = best(x).cpu()
    assert (got - want).abs().max().item() <= 2e-2 * max(1.0, want.abs().max().item())
