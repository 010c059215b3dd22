"""Latency and throughput measurement that can be trusted and reproduced.

Two settings, as in the paper and the official code:

* CPU, batch 1 (the paper's latency setting): eager unfused, eager fused, TorchScript,
  ONNX Runtime and ONNX Runtime INT8, OpenVINO and OpenVINO INT8 (NNCF), optionally timm's
  RepViT beside them. By default every runtime that is installed is measured.
* GPU throughput (the official ``speed_gpu.py`` setting): a large batch, with dtype,
  channels_last, fusion, ``torch.compile`` and CUDA graphs as options; images per second.

Fairness rules: every runtime gets the same warm-up; timed rounds are interleaved (each
round runs every candidate once, the order rotating) so a background job slows all of
them alike; figures are medians with the 10th-90th percentile spread; the load average
is recorded before and after. Every result carries its device (and the CPU's model), threads,
the load before and after, dtype, memory format, batch, fused flag and library versions. The
paper's iPhone 12 latencies are printed beside, labelled as the paper's: they were measured on a phone's Neural Engine
with Core ML and are not comparable to anything measured here.
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..models.factory import create_model
from ..models.reparam import reparameterize
from ..models.variants import VARIANTS
from .optimize import DTYPES, optimize_for_inference, prepare_gpu
from ..engine.timing import environment, load_average, summarize, time_interleaved, torch_threads

CPU_RUNTIMES = ("eager-unfused", "eager-fused", "eager-fused-cl", "torchscript", "compile", "onnxruntime", "int8",
                "openvino", "openvino-int8", "litert", "litert-int8")
# Asked for by name only: torch.compile spends a minute or more compiling each model before timing.
OPT_IN_RUNTIMES = ("compile",)
# The package each optional runtime needs, and the extra that installs it.
RUNTIME_PACKAGES = {"onnxruntime": (("onnx", "onnxscript", "onnxruntime"), "onnx"),
                    "int8": (("onnx", "onnxscript", "onnxruntime"), "onnx"),
                    "openvino": (("openvino",), "deploy"), "openvino-int8": (("openvino", "nncf"), "deploy"),
                    "litert": (("litert_torch", "ai_edge_litert"), "litert"),
                    "litert-int8": (("litert_torch", "ai_edge_litert"), "litert")}
TIMM_RUNTIMES = ("timm-eager-unfused", "timm-eager-fused")


@dataclass
class Result:
    model: str
    runtime: str              # eager / torchscript / onnxruntime / onnxruntime-int8 / optimized ...
    source: str               # "repvit" (this library) or "timm"
    device: str
    threads: int
    dtype: str
    memory_format: str
    batch: int
    img_size: int
    fused: bool
    compiled: bool = False
    cuda_graphs: bool = False
    samples: int = 0
    median_ms: float = 0.0
    p10_ms: float = 0.0
    p90_ms: float = 0.0
    min_ms: float = 0.0
    img_per_s: float = 0.0
    paper_iphone12_ms: Optional[float] = None
    note: str = ""
    cpu: str = ""                 # the CPU's model name (GPU runs: the host's)
    load_avg_1min_before: float = 0.0
    load_avg_1min_after: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.source} {self.runtime}"


@dataclass
class Report:
    environment: dict
    results: list[Result] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"environment": self.environment, "settings": self.settings, "load_avg_1min_before": self.load_before,
                "load_avg_1min_after": self.load_after, "results": [asdict(r) for r in self.results],
                "paper_latency_note": PAPER_NOTE}


PAPER_NOTE = ("paper_iphone12_ms is the RepViT paper's latency (iPhone 12, Core ML, batch 1), shown for reference; "
              "it was not measured here")


# --------------------------------------------------------------------------- building candidates
def build_ours(name: str, checkpoint: Optional[str] = None) -> nn.Module:
    """The model as the paper benchmarks it: 1000 classes with the distillation head, eval mode."""
    if checkpoint:
        return create_model(name, checkpoint=checkpoint).eval()
    return create_model(name, num_classes=1000, distillation=True).eval()


def build_timm(name: str) -> Optional[nn.Module]:
    """timm's model of the same name, or None when timm has none (e.g. repvit_m0_6)."""
    import timm
    if name not in timm.list_models("repvit*"):
        return None
    return timm.create_model(name, pretrained=False).eval()


def fuse_timm(model: nn.Module) -> nn.Module:
    fused = copy.deepcopy(model)
    fused.fuse()  # timm's RepVit.fuse() replaces its units in place and returns the model
    return fused.eval()


def _onnx_runner(fused: nn.Module, img_size: int, threads: int, tmp: str, int8: bool,
                 calib_images, calib_count: int, preprocessing: dict) -> tuple[Callable, str]:
    from ..export import onnx as fmt_onnx
    from ..export.artifact import export_metadata
    path = os.path.join(tmp, "fused.onnx")
    if not os.path.exists(path):
        fmt_onnx.export_onnx(fused, path, img_size=img_size, metadata=export_metadata(fused, "onnx", preprocessing))
    note = ""
    if int8:
        from ..export.quantize import quantize_onnx
        arrays, note = _calibration(img_size, calib_images, calib_count, preprocessing)
        q_path = os.path.join(tmp, "fused-int8.onnx")
        quantize_onnx(path, q_path, arrays, calibration_source=str(calib_images or "random"))
        path = q_path
    session = fmt_onnx.session(path, threads)
    return session, note


def installed_runtimes() -> list[str]:
    """The CPU runtimes whose packages are installed here (eager and TorchScript always are), less the
    opt-in ones (``compile``)."""
    return [rt for rt in CPU_RUNTIMES if rt not in OPT_IN_RUNTIMES
            and all(_installed(m) for m in RUNTIME_PACKAGES.get(rt, ((),))[0])]


def _installed(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (blocked) raises ValueError
        return False


def _openvino_runner(fused: nn.Module, img_size: int, threads: int, tmp: str, int8: bool,
                     calib_images, calib_count: int, preprocessing: dict) -> tuple[Callable, str]:
    from ..export import openvino as fmt_ov
    from ..export.artifact import export_metadata
    path = os.path.join(tmp, "fused.xml")
    if not os.path.exists(path):
        fmt_ov.export_openvino(fused, path, img_size=img_size, metadata=export_metadata(fused, "openvino",
                                                                                         preprocessing))
    note = ""
    if int8:
        arrays, note = _calibration(img_size, calib_images, calib_count, preprocessing)
        q_path = os.path.join(tmp, "fused-int8.xml")
        fmt_ov.quantize_openvino(path, q_path, arrays, calibration_source=str(calib_images or "random"))
        path = q_path
    request = fmt_ov.compile_model(path, threads).create_infer_request()
    return request, note


def _litert_runner(fused: nn.Module, img_size: int, threads: int, tmp: str, int8: bool,
                   calib_images, calib_count: int, preprocessing: dict) -> tuple[Callable, str]:
    """The LiteRT interpreter (XNNPACK) on the fused model's ``.tflite`` (batch 1: the file's shape is fixed)."""
    from ..export import litert as fmt_lt
    note, calibration = "", None
    if int8:
        calibration, note = _calibration(img_size, calib_images, calib_count, preprocessing)
    path = os.path.join(tmp, "fused-int8.tflite" if int8 else "fused.tflite")
    fmt_lt.export_litert(fused, path, img_size=img_size, calibration=calibration)
    return fmt_lt.runner(path, threads), note


def _calibration(img_size: int, calib_images, calib_count: int, preprocessing: dict) -> tuple[list, str]:
    from ..export.quantize import calibration_batches
    from ..export.verify import random_batch
    if calib_images:
        arrays, _ = calibration_batches(calib_images, preprocessing, calib_count)
        return arrays, f"INT8 calibrated on {len(arrays)} images from {calib_images}"
    return ([random_batch(1, img_size, seed=i).numpy() for i in range(16)],
            "INT8 calibrated on random inputs (latency only; use --calib-images for a deployable model)")


def cpu_latency(models: Sequence[str], *, img_size: int = 224, threads: int = 2,
                runtimes: Optional[Sequence[str]] = None,
                compare_timm: bool = False, warmup: int = 10, rounds: int = 10, iters: int = 20, batch: int = 1,
                checkpoint: Optional[str] = None, calib_images=None, calib_count: int = 300,
                log: Callable[[str], None] = lambda _: None) -> Report:
    """CPU latency of every requested runtime (default: every installed one) and timm's model, interleaved."""
    runtimes = installed_runtimes() if runtimes is None else list(runtimes)
    unknown = set(runtimes) - set(CPU_RUNTIMES)
    if unknown:
        raise ValueError(f"unknown CPU runtimes {sorted(unknown)}; choose from {', '.join(CPU_RUNTIMES)}")
    if not runtimes:
        raise ValueError("choose at least one runtime")
    installed = installed_runtimes() + list(OPT_IN_RUNTIMES)
    for rt in runtimes:
        if rt not in installed:
            modules, extra = RUNTIME_PACKAGES[rt]
            missing = " and ".join(m for m in modules if not _installed(m))
            raise ImportError(f"the {rt} runtime needs {missing}, which is not installed: "
                              f"pip install 'repvit-pytorch[{extra}]'")
    report = Report(environment=environment("cpu"), settings={
        "img_size": img_size, "threads": threads, "batch": batch, "warmup": warmup, "rounds": rounds, "iters": iters,
        "interleaved": True, "timing": "per call, perf_counter", "torch.inference_mode": True})
    with torch_threads(threads) as used, torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        report.environment["torch_threads"] = used
        x = torch.randn(batch, 3, img_size, img_size)
        x_np = x.numpy()
        candidates, meta = {}, {}
        for name in models:
            paper = VARIANTS[name].iphone12_ms if name in VARIANTS else None
            base = dict(model=name, device="cpu", threads=used, batch=batch, img_size=img_size,
                        paper_iphone12_ms=paper)
            model = build_ours(name, checkpoint)
            fused = reparameterize(model)
            if "eager-unfused" in runtimes:
                candidates[(name, "eager-unfused")] = lambda m=model: m(x)
                meta[(name, "eager-unfused")] = Result(runtime="eager", source="repvit", dtype="float32",
                                                       memory_format="NCHW", fused=False, **base)
            if "eager-fused" in runtimes:
                candidates[(name, "eager-fused")] = lambda m=fused: m(x)
                meta[(name, "eager-fused")] = Result(runtime="eager", source="repvit", dtype="float32",
                                                     memory_format="NCHW", fused=True, **base)
            if "eager-fused-cl" in runtimes:
                fused_cl = copy.deepcopy(fused).to(memory_format=torch.channels_last)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                candidates[(name, "eager-fused-cl")] = lambda m=fused_cl: m(x_cl)
                meta[(name, "eager-fused-cl")] = Result(runtime="eager-channels-last", source="repvit",
                                                        dtype="float32", memory_format="channels_last", fused=True,
                                                        **base)
            if "compile" in runtimes:
                from torch._inductor import config as inductor_config
                log(f"compiling {name} (inductor, freezing) ...")
                compiled = torch.compile(copy.deepcopy(fused))
                with inductor_config.patch(freezing=True):
                    compiled(x)   # compiles (with the weights frozen into the graph) on this first call
                candidates[(name, "compile")] = lambda m=compiled: m(x)
                meta[(name, "compile")] = Result(runtime="torch.compile", source="repvit", dtype="float32",
                                                 memory_format="NCHW", fused=True, compiled=True,
                                                 note="inductor, freezing", **base)
            if "torchscript" in runtimes:
                from ..export.torchscript import export_torchscript, load
                path = os.path.join(tmp, f"{name}.pt")
                export_torchscript(fused, path, metadata={})
                scripted = load(path)[0]
                candidates[(name, "torchscript")] = lambda m=scripted: m(x)
                meta[(name, "torchscript")] = Result(runtime="torchscript", source="repvit", dtype="float32",
                                                     memory_format="NCHW", fused=True, **base)
            for rt, int8 in (("onnxruntime", False), ("int8", True)):
                if rt not in runtimes:
                    continue
                log(f"preparing {name} {rt} ...")
                sub = os.path.join(tmp, name)
                os.makedirs(sub, exist_ok=True)
                session, note = _onnx_runner(fused, img_size, used, sub, int8, calib_images, calib_count,
                                             dict(model.preprocessing, input_size=[3, img_size, img_size]))
                feed = {session.get_inputs()[0].name: x_np}
                candidates[(name, rt)] = lambda s=session, f=feed: s.run(None, f)
                meta[(name, rt)] = Result(runtime="onnxruntime-int8" if int8 else "onnxruntime", source="repvit",
                                          dtype="int8 (QDQ)" if int8 else "float32", memory_format="NCHW",
                                          fused=True, note=note, **base)
            for rt, int8 in (("openvino", False), ("openvino-int8", True)):
                if rt not in runtimes:
                    continue
                log(f"preparing {name} {rt} ...")
                sub = os.path.join(tmp, name)
                os.makedirs(sub, exist_ok=True)
                request, note = _openvino_runner(fused, img_size, used, sub, int8, calib_images, calib_count,
                                                 dict(model.preprocessing, input_size=[3, img_size, img_size]))
                candidates[(name, rt)] = lambda r=request: r.infer([x_np])
                meta[(name, rt)] = Result(runtime=rt, source="repvit", dtype="int8 (NNCF)" if int8 else "float32",
                                          memory_format="NCHW", fused=True, note=note, **base)
            for rt, int8 in (("litert", False), ("litert-int8", True)):
                if rt not in runtimes:
                    continue
                if batch != 1:
                    log(f"{rt}: skipped at batch {batch} (a .tflite file has a fixed batch of 1)")
                    continue
                log(f"preparing {name} {rt} ...")
                sub = os.path.join(tmp, name)
                os.makedirs(sub, exist_ok=True)
                run, note = _litert_runner(fused, img_size, used, sub, int8, calib_images, calib_count,
                                           dict(model.preprocessing, input_size=[3, img_size, img_size]))
                candidates[(name, rt)] = lambda r=run: r(x)
                meta[(name, rt)] = Result(runtime=rt, source="repvit",
                                          dtype="int8 (full integer, PT2E)" if int8 else "float32",
                                          memory_format="NHWC (XNNPACK)", fused=True, note=note, **base)
            if compare_timm:
                theirs = build_timm(name)
                if theirs is None:
                    log(f"timm has no {name}; comparing the others only")
                else:
                    theirs_fused = fuse_timm(theirs)
                    for rt, m, is_fused in (("timm-eager-unfused", theirs, False), ("timm-eager-fused", theirs_fused, True)):
                        if ("eager-unfused" if not is_fused else "eager-fused") not in runtimes:
                            continue
                        candidates[(name, rt)] = lambda m=m: m(x)
                        meta[(name, rt)] = Result(runtime="eager", source="timm", dtype="float32",
                                                  memory_format="NCHW", fused=is_fused, **base)
        if not candidates:
            raise ValueError("nothing to measure: check --runtimes")
        log(f"timing {len(candidates)} candidates: {warmup} warm-up calls, {rounds} interleaved rounds x {iters} calls, "
            f"{used} threads")
        samples = time_with_load(report, candidates, warmup=warmup, rounds=rounds, iters=iters)
    return add_rows(report, samples, meta, batch)


def time_with_load(report: Report, candidates: dict, **timing) -> dict:
    """``time_interleaved(candidates, **timing)``, the machine's 1-minute load recorded in ``report`` before
    and after (every row carries both)."""
    report.load_before = load_average()
    samples = time_interleaved(candidates, **timing)
    report.load_after = load_average()
    return samples


def add_rows(report: Report, samples: dict, meta: dict, batch: int) -> Report:
    """Fill each candidate's ``Result`` (``meta[key]``) with the statistics of its timings and the run's
    conditions, and append it to ``report``."""
    for key, values in samples.items():
        result = meta[key]
        for k, v in summarize(values).items():
            setattr(result, k, v)
        result.img_per_s = batch * 1e3 / result.median_ms
        _conditions(result, report)
        report.results.append(result)
    return report


def _conditions(result: Result, report: Report) -> None:
    """Each row carries the machine's state with it, so a row copied on its own still says where it ran."""
    result.cpu = report.environment.get("cpu", "")
    result.load_avg_1min_before, result.load_avg_1min_after = report.load_before, report.load_after


def gpu_throughput(models: Sequence[str], *, device: str = "cuda", batch: int = 256, img_size: int = 224,
                   dtype: str = "float16", channels_last: bool = True, fused: bool = True, compile: bool = False,
                   cuda_graphs: bool = False, compare_timm: bool = False, optimized: bool = False, warmup: int = 10,
                   rounds: int = 5, iters: int = 20, checkpoint: Optional[str] = None,
                   log: Callable[[str], None] = lambda _: None) -> Report:
    """Images per second on a GPU at ``batch``; ours and (optionally) timm's under the same options."""
    if not torch.cuda.is_available():
        raise ValueError("GPU throughput needs CUDA, and no CUDA device is visible; run the CPU benchmark "
                         "(repvit bench --device cpu) or use a machine with a GPU")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    report = Report(environment=environment(device), settings={
        "img_size": img_size, "batch": batch, "dtype": dtype, "channels_last": channels_last, "fused": fused,
        "compile": compile, "cuda_graphs": cuda_graphs, "warmup": warmup, "rounds": rounds, "iters": iters,
        "interleaved": True, "timing": "back-to-back calls between device synchronisations"})
    torch.backends.cudnn.benchmark = True
    memory = "channels_last" if channels_last else "NCHW"
    candidates, meta = {}, {}
    # no_grad, not inference_mode, throughout: compiled and graph-captured modules are keyed on
    # the grad mode they were prepared in, and must be timed in the same one.
    with torch.no_grad():
        x = torch.randn(batch, 3, img_size, img_size, device=device, dtype=DTYPES[dtype])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for name in models:
            base = dict(model=name, device=report.environment.get("gpu", device), threads=torch.get_num_threads(),
                        batch=batch, img_size=img_size, dtype=dtype, memory_format=memory, compiled=compile,
                        cuda_graphs=cuda_graphs, paper_iphone12_ms=VARIANTS[name].iphone12_ms if name in VARIANTS else None)
            sources = [("repvit", build_ours(name, checkpoint))]
            if compare_timm:
                theirs = build_timm(name)
                if theirs is not None:
                    sources.append(("timm", theirs))
                else:
                    log(f"timm has no {name}")
            for source, model in sources:
                if fused:
                    model = reparameterize(model) if source == "repvit" else fuse_timm(model)
                log(f"preparing {source} {name} ({'compiling, ' if compile else ''}{dtype}, {memory}) ...")
                run = prepare_gpu(model, device=device, dtype=DTYPES[dtype], channels_last=channels_last,
                                  compile=compile, cuda_graphs=cuda_graphs, example=x)
                candidates[(name, source)] = lambda r=run: r(x)
                meta[(name, source)] = Result(runtime="eager" if not compile else "compiled", source=source,
                                              fused=fused, **base)
            if optimized:
                best = optimize_for_inference(build_ours(name, checkpoint), device=device, dtype=DTYPES[dtype],
                                              batch_size=batch, img_size=img_size)
                candidates[(name, "optimized")] = lambda r=best: r(x)
                meta[(name, "optimized")] = Result(runtime=f"optimize_for_inference ({best.path})", source="repvit",
                                                   fused=True, **{**base, "compiled": best.compiled,
                                                                  "cuda_graphs": best.cuda_graphs})
        samples = time_with_load(report, candidates, warmup=warmup, rounds=rounds, iters=iters, per_call=False,
                                 sync=torch.cuda.synchronize)
    return add_rows(report, samples, meta, batch)


# --------------------------------------------------------------------------- printing
def format_report(report: Report) -> str:
    env = report.environment
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    where = env.get("gpu", env["cpu"])
    lines = [f"device: {env['device']} ({where}), torch threads {env['torch_threads']} of {env['cpu_count']} cores; "
             f"load avg (1 min) {report.load_before} before, {report.load_after} after",
             f"versions: {versions}",
             f"settings: " + ", ".join(f"{k}={v}" for k, v in report.settings.items())]
    width = max([12] + [len(r.model) for r in report.results])
    header = (f"{'model':<{width}} {'source':<11} {'runtime':<17} {'fused':<5} {'dtype':<11} {'memory':<13} {'batch':>5} "
              f"{'thr':>3} {'median ms':>10} {'p10-p90 ms':>15} {'img/s':>9}   {'paper iPhone 12 ms':>18}")
    lines += [header, "-" * len(header)]
    for r in report.results:
        paper = f"{r.paper_iphone12_ms:.1f} (paper)" if r.paper_iphone12_ms is not None else "-"
        runtime = r.runtime + ("+graphs" if r.cuda_graphs and "optimize" not in r.runtime else "")
        lines.append(f"{r.model:<{width}} {r.source:<11} {runtime[:17]:<17} {'yes' if r.fused else 'no':<5} {r.dtype:<11} "
                     f"{r.memory_format:<13} {r.batch:>5} {r.threads:>3} {r.median_ms:>10.3f} "
                     f"{r.p10_ms:>7.3f}-{r.p90_ms:<7.3f} {r.img_per_s:>9.1f}   {paper:>18}")
    notes = sorted({r.note for r in report.results if r.note})
    lines += [f"note: {n}" for n in notes]
    lines.append(f"note: {PAPER_NOTE}.")
    return "\n".join(lines)


def ratios(report: Report, numerator: str = "repvit", denominator: str = "timm") -> list[dict]:
    """ours / timm median latency per model and fused flag (<= 1.0 means ours is as fast or faster)."""
    out = []
    by_key = {(r.model, r.source, r.fused, r.runtime): r for r in report.results}
    for (model, source, fused, runtime), r in by_key.items():
        other = by_key.get((model, denominator, fused, runtime))
        if source == numerator and other is not None:
            out.append({"model": model, "fused": fused, "runtime": runtime, "ours_ms": r.median_ms,
                        "timm_ms": other.median_ms, "ratio": r.median_ms / other.median_ms})
    return out
