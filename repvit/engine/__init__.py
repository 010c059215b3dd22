"""The one training engine every capability trains with: a task (data, model, loss, metric, file
format) handed to one loop that owns checkpoints, exact resume, signals, DDP, evaluation, progress and
metrics. Nothing here knows about classification, detection, segmentation or SAM."""
