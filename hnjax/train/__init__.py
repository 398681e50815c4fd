"""Training engine: compiled step, data parallelism, loop with mining hooks, checkpoints with exact resume, metrics.

Submodules: ``state`` (TrainState, AdamW + schedule), ``step`` (make_train_step, accumulation), ``config``
(TrainConfig, argparse glue), ``checkpoint`` (orbax, exact resume), ``metrics`` (JSONL, TensorBoard, time split),
``loop`` (fit). See docs/train.md.
"""
