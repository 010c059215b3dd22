"""CPU latency of the dense backbone + FPN and of the RepViT-SAM image encoder through every runtime
(``repvit bench --task dense`` and ``--task sam``), interleaved, every row with its conditions.

The classifier benchmark (``bench.py``) compares with timm. Here the reference is our own fused eager
model (the deployment goals are ratios to it), and the dense task also runs torchvision's
MobileNetV3-Large with an FPN on the same four strides as ours (4-32, 256 channels, P6 by pooling)
through the same runtimes, so each runtime's row of the two can be compared. Before timing, every
float runtime's outputs are checked against eager PyTorch (within 1e-3 of the largest output); the
INT8 ones are calibrated on random inputs (latency does not depend on the calibration; their
accuracy is measured on real data: ``benchmarks/int8_imagenette.py``, ``benchmarks/int8_camvid.py``).
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..models.reparam import reparameterize
from .bench import CPU_RUNTIMES, Report, Result, add_rows, time_with_load
from ..engine.timing import environment, torch_threads

TASK_IMG_SIZE = {"classify": 224, "dense": 512, "sam": 1024}
SAM_VARIANT = "repvit_m2_3"        # RepViT-SAM's encoder
RUNTIME_LABEL = {"eager-unfused": "eager", "eager-fused": "eager", "eager-fused-cl": "eager-channels-last",
                 "compile": "torch.compile", "torchscript": "torchscript", "onnxruntime": "onnxruntime",
                 "int8": "onnxruntime-int8", "openvino": "openvino", "openvino-int8": "openvino-int8",
                 "litert": "litert", "litert-int8": "litert-int8"}
INT8_DTYPE = {"int8": "int8 (QDQ)", "openvino-int8": "int8 (NNCF)", "litert-int8": "int8 (full integer, PT2E)"}


@dataclass
class Subject:
    """One network to time: ``fused`` is its inference form (``unfused`` is the same module where
    there is nothing to fold, as in torchvision's frozen-BatchNorm backbones)."""
    label: str
    source: str
    unfused: nn.Module
    fused: nn.Module


class _Outputs(nn.Module):
    """A module's outputs as a flat tuple (a neck returns an ordered dict of levels)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor):
        out = self.module(x)
        return tuple(out.values()) if isinstance(out, dict) else (out,)


def mobilenet_v3_large_fpn(levels: int = 4) -> nn.Module:
    """torchvision's MobileNetV3-Large backbone with an FPN on the four strides RepViT's dense neck uses
    (4, 8, 16, 32; 256 channels, P6 by max-pooling); ``levels=2`` is what torchvision's own
    MobileNetV3 detectors build (strides 16 and 32 only). Random weights, frozen BatchNorm, eval mode."""
    from torchvision.models.detection.backbone_utils import mobilenet_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    if levels == 2:
        return mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True,
                                  trainable_layers=0).eval()
    if levels != 4:
        raise ValueError(f"levels is 4 (strides 4-32, as RepViT's neck) or 2 (torchvision's), got {levels}")
    # torchvision's "stages" of MobileNetV3-Large are [stem, stride 4, 8, 16, 32, last block]: 1, 2, 3 and 5
    # give strides 4, 8, 16 and 32 (the last one the 960-channel end of the network).
    return mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True, trainable_layers=0,
                              returned_layers=[1, 2, 3, 5], extra_blocks=LastLevelMaxPool()).eval()


def dense_subjects(models: Sequence[str], *, reference: bool = True) -> list[Subject]:
    """RepViT backbone + FPN (the Mask R-CNN neck: detection taps, P2-P6) for each variant, and
    MobileNetV3-Large with the same FPN (``reference``)."""
    from ..dense.backbone import RepViTBackbone
    from ..dense.neck import BackboneWithFPN
    subjects = []
    for name in models:
        unfused = BackboneWithFPN(RepViTBackbone(name, taps="detection"), extra="pool").eval()
        subjects.append(Subject(f"{name} + FPN", "repvit", unfused, reparameterize(unfused)))
    if reference:
        neck = mobilenet_v3_large_fpn()
        subjects.append(Subject("mobilenet_v3_large + FPN", "torchvision", neck, neck))
    return subjects


def sam_subjects(img_size: int = TASK_IMG_SIZE["sam"]) -> list[Subject]:
    """RepViT-SAM's image encoder (RepViT-M2.3 + its neck), random weights."""
    from ..sam.encoder import RepViTSamEncoder
    unfused = RepViTSamEncoder(SAM_VARIANT, img_size=img_size).eval()
    return [Subject("repvit_sam encoder", "repvit", unfused, reparameterize(unfused))]


def _check(run: Callable, expected: list[np.ndarray], what: str) -> None:
    got = [np.asarray(g) for g in run()]
    scale = max(1.0, max(float(np.abs(e).max()) for e in expected))
    worst = max(float(np.abs(g - e).max()) for g, e in zip(got, expected)) if len(got) == len(expected) else np.inf
    if worst > 1e-3 * scale:
        raise ValueError(f"{what} disagrees with eager PyTorch by {worst:.3g} (> {1e-3 * scale:.3g}); not timing it")


def _random_calibration(x: torch.Tensor, count: int = 8) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(x.shape, generator=generator).numpy() for _ in range(count)]


def prepare(subject: Subject, runtime: str, x: torch.Tensor, threads: int, tmp: str,
            log: Callable[[str], None] = lambda _: None) -> Optional[Callable[[], object]]:
    """A no-argument call of ``subject`` on ``x`` through ``runtime`` (checked against eager where it is
    float), or None for ``eager-unfused`` of a subject that has nothing to fold."""
    module = subject.fused
    if runtime == "eager-unfused":
        return None if subject.unfused is subject.fused else (lambda m=subject.unfused: m(x))
    if runtime == "eager-fused":
        return lambda: module(x)
    if runtime == "eager-fused-cl":
        cl = copy.deepcopy(module).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        return lambda: cl(x_cl)
    flat = _Outputs(module).eval()
    with torch.inference_mode():
        expected = [t.numpy() for t in flat(x)]
    x_np = x.numpy()
    stem = os.path.join(tmp, f"{len(os.listdir(tmp))}")
    what = f"{subject.label} through {runtime}"
    if runtime == "compile":
        from torch._inductor import config as inductor_config
        log(f"compiling {subject.label} (inductor, freezing) ...")
        compiled = torch.compile(copy.deepcopy(module))
        with inductor_config.patch(freezing=True), torch.inference_mode():
            compiled(x)
        return lambda: compiled(x)
    if runtime == "torchscript":
        with torch.no_grad():
            scripted = torch.jit.freeze(torch.jit.trace(flat, (x,), check_trace=False).eval())
            _check(lambda: [t.numpy() for t in scripted(x)], expected, what)
        return lambda: scripted(x)
    if runtime in ("onnxruntime", "int8"):
        import warnings
        from ..export.onnx import session
        path = stem + ".onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(flat, (x,), path, dynamo=True, verbose=False, external_data=False,
                              input_names=["image"])
        sess = session(path, threads)
        feed = {sess.get_inputs()[0].name: x_np}
        _check(lambda: sess.run(None, feed), expected, what)
        if runtime == "int8":
            from ..export.quantize import quantize_onnx
            quantize_onnx(path, stem + "-int8.onnx", _random_calibration(x), calibration_source="random")
            sess = session(stem + "-int8.onnx", threads)
        return lambda: sess.run(None, feed)
    if runtime in ("openvino", "openvino-int8"):
        from ..export import openvino as fmt_ov
        model = fmt_ov.convert(flat, (x,), output_names=[f"out{i}" for i in range(len(expected))], what=subject.label)
        path = fmt_ov.save(model, stem + ".xml", {})
        run = fmt_ov.array_runner(path, threads)
        _check(lambda: run(x_np), expected, what)
        if runtime == "openvino-int8":
            run = fmt_ov.array_runner(fmt_ov.quantize_openvino(path, stem + "-int8.xml", _random_calibration(x)),
                                      threads)
        return lambda: run(x_np)
    if runtime in ("litert", "litert-int8"):
        from ..export import litert as fmt_lt
        if x.shape[0] != 1:
            raise ValueError(f"{runtime} takes batch 1 only (a .tflite file has a fixed shape), got {x.shape[0]}")
        fmt_lt.export_litert(flat, stem + ".tflite", img_size=tuple(x.shape[-2:]), example=(x,))
        run = fmt_lt.arrays_runner(stem + ".tflite", threads)
        _check(lambda: run(x_np), expected, what)
        if runtime == "litert-int8":
            fmt_lt.export_litert(flat, stem + "-int8.tflite", img_size=tuple(x.shape[-2:]),
                                 calibration=_random_calibration(x), example=(x,))
            run = fmt_lt.arrays_runner(stem + "-int8.tflite", threads)
        return lambda: run(x_np)
    raise ValueError(f"unknown CPU runtime {runtime!r}; choose from {', '.join(CPU_RUNTIMES)}")


def module_latency(subjects: Sequence[Subject], *, task: str, img_size: int, threads: int = 2,
                   runtimes: Sequence[str] = ("eager-fused",), warmup: int = 2, rounds: int = 6, iters: int = 3,
                   batch: int = 1, log: Callable[[str], None] = lambda _: None) -> Report:
    """CPU latency of every subject through every runtime, interleaved, as the classifier report's rows."""
    unknown = set(runtimes) - set(CPU_RUNTIMES)
    if unknown:
        raise ValueError(f"unknown CPU runtimes {sorted(unknown)}; choose from {', '.join(CPU_RUNTIMES)}")
    report = Report(environment=environment("cpu"), settings={
        "task": task, "img_size": img_size, "threads": threads, "batch": batch, "warmup": warmup, "rounds": rounds,
        "iters": iters, "interleaved": True, "timing": "per call, perf_counter", "torch.inference_mode": True,
        "int8_calibration": "random inputs (latency only)"})
    candidates, meta = {}, {}
    with torch_threads(threads) as used, tempfile.TemporaryDirectory() as tmp:
        report.environment["torch_threads"] = used
        x = torch.randn(batch, 3, img_size, img_size)
        for subject in subjects:
            for runtime in runtimes:
                log(f"preparing {subject.label} {runtime} ...")
                run = prepare(subject, runtime, x, used, tmp, log)
                if run is None:
                    continue
                candidates[(subject.label, runtime)] = run
                int8 = runtime in INT8_DTYPE
                meta[(subject.label, runtime)] = Result(
                    model=subject.label, runtime=RUNTIME_LABEL[runtime], source=subject.source, device="cpu",
                    threads=used, dtype=INT8_DTYPE.get(runtime, "float32"),
                    memory_format={"eager-fused-cl": "channels_last", "litert": "NHWC (XNNPACK)",
                                   "litert-int8": "NHWC (XNNPACK)"}.get(runtime, "NCHW"), batch=batch,
                    img_size=img_size, fused=runtime != "eager-unfused", compiled=runtime == "compile",
                    note="INT8 calibrated on random inputs (latency only)" if int8 else "")
        if not candidates:
            raise ValueError("nothing to measure: check --runtimes")
        log(f"timing {len(candidates)} candidates: {warmup} warm-up calls, {rounds} interleaved rounds x {iters} "
            f"calls, {used} threads")
        with torch.inference_mode():
            samples = time_with_load(report, candidates, warmup=warmup, rounds=rounds, iters=iters)
    return add_rows(report, samples, meta, batch)


def goal_ratios(report: Report) -> list[dict]:
    """Per subject, each runtime's median over the subject's fused eager median; for the dense task also
    each RepViT row over MobileNetV3-Large's row of the same runtime."""
    by_key = {(r.model, r.runtime, r.dtype): r for r in report.results}
    eager = {r.model: r for r in report.results if r.runtime == "eager" and r.fused}
    reference = {(r.runtime, r.dtype): r for r in report.results if r.source == "torchvision"}
    out = []
    for (model, runtime, dtype), r in by_key.items():
        row = {"model": model, "runtime": runtime, "dtype": dtype, "median_ms": r.median_ms}
        if model in eager:
            row["vs_own_fused_eager"] = r.median_ms / eager[model].median_ms
        other = reference.get((runtime, dtype))
        if r.source == "repvit" and other is not None:
            row["vs_mobilenet_v3_large_same_runtime"] = r.median_ms / other.median_ms
        out.append(row)
    return out
