"""Training, evaluation and fine-tuning with the paper's recipe (``repvit train|eval|predict``).

``config`` (options and YAML), ``data`` (folders, transforms, samplers), ``optim`` (optimizer,
schedule, losses), ``distill`` (teacher and distillation loss), ``finetune``, ``checkpointing``
(resume state), ``distributed`` (torchrun), ``progress`` and ``metrics_log`` (feedback),
``engine`` (the loop), ``inference`` (evaluate a checkpoint, predict images).
"""
from .config import parse_args
from .engine import NonFiniteLossError, evaluate, main, train_one_epoch

__all__ = ["NonFiniteLossError", "evaluate", "main", "parse_args", "train_one_epoch"]
