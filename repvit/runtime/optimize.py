"""``optimize_for_inference``: one call from a trained model to the fastest faithful module for a device.

"Faithful" is checked, not assumed: every candidate path is compared with the fused float32
eager model on an example batch and dropped if it disagrees beyond the tolerance (1e-4 for
float32 paths; a tolerance relative to the largest logit for half precision on GPU).

* GPU: fused, channels_last, half precision (float16 unless told otherwise),
  ``torch.compile``, and CUDA graphs for small batches (where launch overhead dominates a
  model this small). These are known wins on GPUs, so they are applied, not raced.
* CPU: which path is fastest depends on the CPU, the thread count and the resolution, so
  the faithful candidates (eager, eager channels_last, frozen TorchScript, ONNX Runtime,
  OpenVINO, LiteRT and, on request, ``torch.compile``; runtimes that are not installed are left out)
  are timed at the requested batch size in interleaved rounds and the fastest is returned.
  INT8 is not a candidate: it changes the outputs (see ``repvit export --int8`` and
  ``repvit bench``).

The result is an ``InferenceModule``: call it with float32 NCHW images on any device; it
moves and converts the input itself and returns float32 logits. ``.path`` names the chosen
path and ``.report`` holds what was measured.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from ..models.reparam import is_fused, reparameterize
from ..engine.timing import summarize, time_interleaved, torch_threads

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CPU_CANDIDATES = ("eager", "eager-channels-last", "torchscript-frozen", "onnxruntime", "openvino", "litert", "compile")
HALF_REL_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 6e-2}
CUDA_GRAPH_MAX_BATCH = 32


class InferenceModule(nn.Module):
    """The chosen runner, plus the input conversion it needs; returns float32 logits."""

    def __init__(self, runner: Callable, *, device: torch.device, dtype: torch.dtype, channels_last: bool,
                 path: str, compiled: bool = False, cuda_graphs: bool = False, report: Optional[dict] = None):
        super().__init__()
        self.runner = runner
        self.device, self.dtype, self.channels_last = torch.device(device), dtype, channels_last
        self.path, self.compiled, self.cuda_graphs = path, compiled, cuda_graphs
        self.report = report or {}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.runner(x)
        # CUDA-graph outputs live in a static buffer that the next call overwrites.
        return out.float().clone() if self.cuda_graphs and out.dtype == torch.float32 else out.float()

    def extra_repr(self) -> str:
        return f"path={self.path!r}, device={self.device}, dtype={self.dtype}, channels_last={self.channels_last}"


class CUDAGraphRunner(nn.Module):
    """Replays one captured CUDA graph per input shape; the first call at a new shape captures it.

    For small batches the GPU finishes each kernel faster than Python can launch the next;
    a graph launches the whole forward at once. Shapes beyond ``max_shapes`` run eagerly.
    """

    def __init__(self, module: nn.Module, *, warmup: int = 3, max_shapes: int = 8):
        super().__init__()
        self.module, self.warmup, self.max_shapes = module, warmup, max_shapes
        self._graphs: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            raise ValueError("CUDAGraphRunner runs CUDA tensors only; move the input to the GPU "
                             "(InferenceModule does this for you)")
        key = (tuple(x.shape), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last))
        with torch.no_grad():
            entry = self._graphs.get(key)
            if entry is None:
                if len(self._graphs) >= self.max_shapes:
                    return self.module(x)
                entry = self._graphs[key] = self._capture(x)
            static_in, static_out, graph = entry
            static_in.copy_(x)
            graph.replay()
            return static_out

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.module(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.module(static_in)
        return static_in, static_out, graph


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime CPU session behind an ``nn.Module`` call (tensor in, tensor out)."""

    def __init__(self, fused: nn.Module, *, img_size: int, threads: Optional[int] = None):
        super().__init__()
        from ..export import onnx as fmt_onnx
        from ..export.artifact import export_metadata, resolved_preprocessing
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "fused.onnx")
            pre = resolved_preprocessing(fused, img_size)
            fmt_onnx.export_onnx(fused, path, img_size=img_size, metadata=export_metadata(fused, "onnx", pre))
            self.session = fmt_onnx.session(path, threads or torch.get_num_threads())
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().float().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


class OpenVINOModule(nn.Module):
    """The fused model converted to OpenVINO in memory and compiled for the CPU (float32, ``threads``)."""

    def __init__(self, fused: nn.Module, *, img_size: int, threads: Optional[int] = None):
        super().__init__()
        from ..export import openvino as fmt_ov
        example = torch.randn(2, 3, img_size, img_size)
        model = fmt_ov.convert(fused, (example,), ({0: torch.export.Dim("batch")},),
                               input_shapes=[(-1, 3, img_size, img_size)])
        self.threads = threads or torch.get_num_threads()
        self.run = fmt_ov.runner(model, self.threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


class LiteRTModule(nn.Module):
    """The fused model as a float32 ``.tflite`` (LiteRT interpreter, XNNPACK, ``threads``) at a fixed
    ``img_size``; a batch runs one image at a time."""

    def __init__(self, fused: nn.Module, *, img_size: int, threads: Optional[int] = None):
        super().__init__()
        from ..export import litert as fmt_lt
        self.threads = threads or torch.get_num_threads()
        with tempfile.TemporaryDirectory() as tmp:
            path = fmt_lt.export_litert(fused, os.path.join(tmp, "fused.tflite"), img_size=img_size)
            self.run = fmt_lt.runner(path, self.threads)  # the interpreter holds the model in memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


# --------------------------------------------------------------------------- GPU
def prepare_gpu(model: nn.Module, *, device: Union[str, torch.device], dtype: torch.dtype, channels_last: bool,
                compile: bool, cuda_graphs: bool, example: Optional[torch.Tensor] = None) -> Callable:
    """``model`` moved, cast and wrapped as asked (shared by ``optimize_for_inference`` and the benchmark)."""
    model = copy.deepcopy(model).eval().to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run: Callable = model
    if compile:
        # With CUDA graphs, torch.compile's own graph trees replay the compiled kernels.
        run = torch.compile(model, mode="reduce-overhead" if cuda_graphs else None, dynamic=False)
    elif cuda_graphs:
        run = CUDAGraphRunner(model)
    if example is not None:
        with torch.no_grad():
            run(example)
            run(example)
        torch.cuda.synchronize(device)
    return run


def _resolve(value: Optional[bool], default: bool) -> bool:
    return default if value is None else bool(value)


def optimize_for_inference(model: nn.Module, device: Union[str, torch.device] = "cpu",
                           dtype: Union[str, torch.dtype, None] = None, *, batch_size: int = 1,
                           img_size: Optional[int] = None, channels_last: Optional[bool] = None,
                           compile: Optional[bool] = None, cuda_graphs: Optional[bool] = None,
                           candidates: Optional[Sequence[str]] = None, measure: bool = True,
                           threads: Optional[int] = None, tolerance: float = 1e-4, rounds: int = 5, iters: int = 10,
                           log: Callable[[str], None] = lambda _: None) -> InferenceModule:
    """The fastest faithful inference module for ``device`` (see the module docstring).

    ``model`` is fused here if it is not already (a copy: the argument is never modified).
    ``batch_size`` and ``img_size`` are the shapes the caller will use; paths are chosen
    and checked at that shape. Options left ``None`` take the device's sensible default.
    """
    device = torch.device(device)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device} is not supported; use 'cpu' or 'cuda'")
    if device.type == "cpu":
        if dtype not in (None, torch.float32):
            raise ValueError(f"on CPU the faithful paths are float32 (got {dtype}); for a smaller, faster CPU model "
                             "use INT8: repvit export --format onnx --int8")
        if cuda_graphs:
            raise ValueError("cuda_graphs=True needs device='cuda'")
        unknown = set(candidates or ()) - set(CPU_CANDIDATES)
        if unknown:
            raise ValueError(f"candidates must be a subset of {', '.join(CPU_CANDIDATES)}, got {sorted(unknown)}")
    elif not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available on this machine; use device='cpu'")
    fused = copy.deepcopy(model).eval().float().cpu()
    if not is_fused(fused):
        fused = reparameterize(fused, inplace=True)
    fused.requires_grad_(False)
    size = int(img_size or getattr(fused, "preprocessing", {}).get("input_size", (3, 224, 224))[-1])
    example = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = fused(example)
    if device.type == "cuda":
        return _optimize_gpu(fused, device, dtype or torch.float16, example, reference, batch_size=batch_size,
                             channels_last=_resolve(channels_last, True), compile=_resolve(compile, True),
                             cuda_graphs=_resolve(cuda_graphs, batch_size <= CUDA_GRAPH_MAX_BATCH), log=log)
    return _optimize_cpu(fused, example, reference, candidates=candidates, compile=compile,
                         channels_last=channels_last, measure=measure, threads=threads, tolerance=tolerance,
                         rounds=rounds, iters=iters, img_size=size, log=log)


def _optimize_gpu(fused, device, dtype, example, reference, *, batch_size, channels_last, compile, cuda_graphs, log):
    x = example.to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    log(f"preparing GPU path: {dtype}, {'channels_last' if channels_last else 'NCHW'}, compile={compile}, "
        f"cuda_graphs={cuda_graphs}")
    run = prepare_gpu(fused, device=device, dtype=dtype, channels_last=channels_last, compile=compile,
                      cuda_graphs=cuda_graphs, example=x)
    module = InferenceModule(run, device=device, dtype=dtype, channels_last=channels_last,
                             path="+".join(p for p, on in (("fused", True), (str(dtype).split(".")[-1], True),
                                                            ("channels_last", channels_last), ("compile", compile),
                                                            ("cuda_graphs", cuda_graphs)) if on),
                             compiled=compile, cuda_graphs=cuda_graphs)
    with torch.no_grad():
        got = module(example).cpu()
    diff = (got - reference).abs().max().item()
    allowed = HALF_REL_TOLERANCE.get(dtype, 1e-4) * max(1.0, reference.abs().max().item())
    module.report = {"max_abs_diff_vs_fp32": diff, "tolerance": allowed, "batch_size": batch_size}
    if not diff <= allowed:
        raise ValueError(f"the {module.path} path differs from the float32 model by {diff:.3g} (> {allowed:.3g}); "
                         "use dtype='float32'")
    return module


def _cpu_candidate(kind: str, fused: nn.Module, img_size: int, threads: int) -> tuple[Callable, bool]:
    """(runner, channels_last) for one CPU path."""
    if kind == "eager":
        return fused, False
    if kind == "eager-channels-last":
        return copy.deepcopy(fused).to(memory_format=torch.channels_last), True
    if kind == "torchscript-frozen":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.freeze(torch.jit.script(copy.deepcopy(fused)))
            return torch.jit.optimize_for_inference(scripted), False
    if kind == "onnxruntime":
        return OnnxRuntimeModule(fused, img_size=img_size, threads=threads), False
    if kind == "openvino":
        return OpenVINOModule(fused, img_size=img_size, threads=threads), False
    if kind == "litert":
        return LiteRTModule(fused, img_size=img_size, threads=threads), False
    if kind == "compile":
        return torch.compile(copy.deepcopy(fused), dynamic=False), False
    raise ValueError(f"unknown CPU candidate {kind!r}; choose from {', '.join(CPU_CANDIDATES)}")


def _optimize_cpu(fused, example, reference, *, candidates, compile, channels_last, measure, threads, tolerance,
                  rounds, iters, img_size, log) -> InferenceModule:
    if candidates is None:
        candidates = [c for c in CPU_CANDIDATES if c != "compile" or compile]
        if channels_last is False:
            candidates.remove("eager-channels-last")
        if not _has_onnxruntime():
            candidates.remove("onnxruntime")
        if not _has_openvino():
            candidates.remove("openvino")
        if not _has_litert():
            candidates.remove("litert")
    elif compile is False:
        candidates = [c for c in candidates if c != "compile"]
    unknown = set(candidates) - set(CPU_CANDIDATES)
    if unknown or not candidates:
        raise ValueError(f"candidates must be a non-empty subset of {', '.join(CPU_CANDIDATES)}, got {candidates}")
    report: dict = {"candidates": {}, "batch_size": example.shape[0], "img_size": img_size}
    runners = {}
    # Candidates are built outside inference mode: modules created inside it hold inference
    # tensors that cannot be used anywhere else.
    with torch_threads(threads) as used, torch.no_grad():
        report["threads"] = used
        for kind in candidates:
            try:
                run, cl = _cpu_candidate(kind, fused, img_size, used)
                x = example.contiguous(memory_format=torch.channels_last) if cl else example
                diff = (run(x).float() - reference).abs().max().item()
            except Exception as err:  # noqa: BLE001 - a path that cannot run here is skipped, with the reason
                report["candidates"][kind] = {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
                log(f"  {kind}: skipped ({report['candidates'][kind]['skipped']})")
                continue
            report["candidates"][kind] = {"max_abs_diff": diff, "faithful": diff <= tolerance}
            if diff <= tolerance:
                runners[kind] = (run, cl, x)
            else:
                log(f"  {kind}: dropped, differs by {diff:.3g} > {tolerance:g}")
        if not runners:
            raise ValueError(f"no faithful CPU path: {report['candidates']}")
        if measure and len(runners) > 1:
            samples = time_interleaved({k: (lambda r=r, x=x: r(x)) for k, (r, _, x) in runners.items()},
                                       warmup=3, rounds=rounds, iters=iters)
            for kind, values in samples.items():
                report["candidates"][kind].update(summarize(values))
                log(f"  {kind}: median {report['candidates'][kind]['median_ms']:.3f} ms")
            best = min(samples, key=lambda k: report["candidates"][k]["median_ms"])
        else:
            best = next(iter(runners))
    run, cl, _ = runners[best]
    report["chosen"] = best
    log(f"chosen CPU path: {best}")
    return InferenceModule(run, device=torch.device("cpu"), dtype=torch.float32, channels_last=cl,
                           path=f"fused+{best}", compiled=best == "compile", report=report)


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _has_openvino() -> bool:
    from ..export.openvino import available
    return available()


def _has_litert() -> bool:
    from ..export.litert import available
    return available()
