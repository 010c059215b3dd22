"""Image classification with the paper's recipe (``repvit train|eval|predict``): ``config`` (the
option table), ``data`` (folders, transforms, samplers), ``augment``, ``optim`` (optimizer, schedule,
losses), ``distill`` (teacher and distillation loss), ``finetune``, ``engine`` (the classification
run on the shared engine), ``eval_predict`` (score a checkpoint, predict images)."""
from .config import parse_args
from .engine import NonFiniteLossError, evaluate, main, train_one_epoch

__all__ = ["NonFiniteLossError", "evaluate", "main", "parse_args", "train_one_epoch"]
