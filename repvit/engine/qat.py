"""Quantization-aware fine-tuning (QAT) of a fused model for the PT2E INT8 exports (LiteRT, ExecuTorch).

Post-training quantization fixes the ranges and rounds the trained weights; where that costs more
accuracy than a runtime may lose (LiteRT's full-integer CamVid segmenter: -1.26 mIoU points,
``benchmarks/deployment.md``), a short fine-tune with the quantization in the graph wins it back:
the fused model is exported at the file's fixed input shape, the runtime's quantizer inserts its
fake-quantize ops in their QAT form (ranges tracked by moving averages, gradients through the
rounding), and the weights are trained for ``epochs`` passes over labelled training samples at a
small learning rate, batch 1 (the exported graph has the file's shape). The trained graph is what
the format's converter then writes, so the file computes what was trained.

Data and loss come from the capability (a segmenter's frames and cross-entropy, a classifier's
images and labels): ``samples`` follows the engine's convention, ``get(index, generator)`` drawing
its augmentation from ``generator``, the order of each epoch is the engine's ``epoch_order`` and
the global generator is seeded for the run, so a run is a function of ``seed`` (at one thread count). Progress goes through the engine's ``Reporter``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .data import EpochSeeded, epoch_order
from .progress import Reporter


@dataclass
class QATSetting:
    """What a quantization-aware fine-tune trains on and how.

    ``samples``: ``len()`` and ``get(index, generator) -> (image [3, H, W] float at the file's size,
    target)``; ``loss(logits, target)``: a scalar for a batch of one (the target batched as the
    collate of one sample). ``epochs`` may be fractional (0.5 = half the samples). After a run,
    ``report`` holds its steps, seconds and the mean loss of the first and last 50 steps (of each half of
    a shorter run)."""
    samples: Any
    loss: Callable[[torch.Tensor, Any], torch.Tensor]
    epochs: float = 1.0
    lr: float = 1e-5
    seed: int = 0
    log_interval: int = 50
    reporter: Optional[Reporter] = None
    report: dict = field(default_factory=dict)

    def __post_init__(self):
        if not len(self.samples):
            raise ValueError("quantization-aware training needs training samples: the folder given has none")
        if not self.epochs > 0:
            raise ValueError(f"QAT epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"QAT learning rate must be > 0, got {self.lr}")

    @property
    def steps(self) -> int:
        return max(1, int(round(self.epochs * len(self.samples))))

    def fine_tune(self, fused: nn.Module, example: Sequence[torch.Tensor], quantizer) -> nn.Module:
        """The format backends' entry point (they know only this method): ``fine_tune`` below."""
        return fine_tune(fused, example, quantizer, self)


def _batched(target: Any) -> Any:
    return target[None] if isinstance(target, torch.Tensor) else torch.as_tensor([target])


def fine_tune(fused: nn.Module, example: Sequence[torch.Tensor], quantizer, setting: QATSetting) -> nn.Module:
    """``fused`` exported at ``example``'s shapes, prepared for QAT with ``quantizer`` (its QAT
    configuration), trained as ``setting`` says, and returned in eval mode, ready for ``convert_pt2e``.
    The global generator is seeded with ``setting.seed`` for the run and restored after: the caller's
    random numbers are not consumed by the preparation, and a run does not depend on what ran before it
    in the process. (Dropout is not in the graph: ``fused`` is exported in eval mode.) Runs with other
    thread counts sum in other orders and drift apart over the steps: compare runs at one thread count."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setting.seed)
        return _fine_tune(fused, example, quantizer, setting)


def _fine_tune(fused: nn.Module, example: Sequence[torch.Tensor], quantizer, setting: QATSetting) -> nn.Module:
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    example = tuple(example)
    shape = tuple(example[0].shape[-2:])
    graph = prepare_qat_pt2e(torch.export.export(fused.eval(), example).module(), quantizer)
    move_exported_model_to_train(graph)
    params = [p for p in graph.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=setting.lr, weight_decay=0.0)
    n, steps = len(setting.samples), setting.steps
    reporter = setting.reporter or Reporter(interval=setting.log_interval)
    epochs = math.ceil(steps / n)
    seeded = EpochSeeded(setting.samples, setting.seed)     # sample k of epoch e drawn from (seed, e, k)
    losses, step, start = [], 0, time.perf_counter()
    with torch.enable_grad():
        for epoch in range(epochs):
            order = epoch_order(n, setting.seed, epoch, 0, 1, 1)[: min(n, steps - step)]
            reporter.start_epoch(epoch, epochs, len(order))
            seeded.set_epoch(epoch)
            for k, index in enumerate(order):
                image, target = seeded[index]
                if tuple(image.shape[-2:]) != shape:
                    raise ValueError(f"QAT sample {index} is {tuple(image.shape[-2:])}, the exported graph takes "
                                     f"{shape}: the samples must be at the file's fixed size")
                loss = setting.loss(graph(image[None].float()), _batched(target))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"QAT loss is {float(loss)} at step {step + 1}: lower the QAT "
                                             f"learning rate (now {setting.lr:g})")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss))
                reporter.step(k, losses[-1], setting.lr, 1)
                step += 1
            reporter.end_epoch()
    move_exported_model_to_eval(graph)
    window = max(1, min(50, len(losses) // 2))
    setting.report.update(steps=len(losses), seconds=time.perf_counter() - start, lr=setting.lr,
                          epochs=setting.epochs, samples=n,
                          loss_first=float(sum(losses[:window]) / window),
                          loss_last=float(sum(losses[-window:]) / window))
    return graph


__all__ = ["QATSetting", "fine_tune"]
