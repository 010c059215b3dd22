"""Image classification with the paper's recipe (``repvit train|eval|predict``): ``config`` (the
option table), ``data`` (folders, transforms, samplers), ``augment``, ``optim`` (optimizer, schedule,
losses), ``distill`` (teacher and distillation loss), ``finetune``, ``evaluation`` (top-1/top-5 over sharded validation), ``task`` (classification as a task
of the training engine, ``repvit.engine``), ``eval_predict`` (score a checkpoint, predict images)."""
from .config import parse_args
from .evaluation import evaluate
from .task import NonFiniteLossError, main

__all__ = ["NonFiniteLossError", "evaluate", "main", "parse_args"]
