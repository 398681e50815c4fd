"""One-label sequence-classification checkpoints ↔ the cross-encoder head (`poolers.CrossEncoderHead`).

transformers' one-label classifiers compute the same score as the head with ``pooling="cls"``:

=====================================  ===========================================  ==============================
architecture                           tensors                                       score
=====================================  ===========================================  ==============================
``BertForSequenceClassification``      ``bert.pooler.dense.*`` (P, p),               w · tanh(P h_[CLS] + p) + c
                                       ``classifier.*`` (w, c)
``RobertaForSequenceClassification``   ``classifier.dense.*`` (P, p),                w · tanh(P h_<s> + p) + c
                                       ``classifier.out_proj.*`` (w, c)
=====================================  ===========================================  ==============================

(dropout sits before the score layer in both, and before P as well in RoBERTa's head; it acts in training only).
sentence-transformers' ``CrossEncoder`` loads such a folder as it is; ``config.json`` names ``Identity`` as its
activation so that ``CrossEncoder.predict`` returns the raw score, not its sigmoid.

This module converts tensors and writes the config; whole checkpoints are in :mod:`hnjax.models.interop`.

References:
  Hugging Face transformers, ``BertForSequenceClassification``, ``RobertaClassificationHead``.
  sentence-transformers, ``CrossEncoder`` (``config.json`` key ``sentence_transformers.activation_fn``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

IDENTITY = "torch.nn.modules.linear.Identity"
# Our head path → tensor name, per model type; every Linear weight is transposed ([out, in] ↔ [in, out]).
HEAD_TENSORS = {
    "bert": {"pooler": "pooler.dense", "score": "classifier"},
    "roberta": {"pooler": "classifier.dense", "score": "classifier.out_proj"},
}
ARCHITECTURES = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification"}
PREFIXES = {"bert": "bert.", "roberta": "roberta."}


def head_from_tensors(
    tensors: dict[str, np.ndarray], model_type: str, hidden_size: int, *, source: str = "checkpoint"
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The cross-encoder head parameters found in a checkpoint's tensors (model prefixes already removed).

    Args:
      tensors: tensor name → array, without the "bert."/"roberta." prefix.
      model_type: "bert" or "roberta".
      hidden_size: D.
      source: the weights file, for messages.

    Returns:
      ``(params, used, ignored)``: ``params`` holds ``"pooler"`` and/or ``"score"`` (``{"kernel", "bias"}``
      float32, kernels [D, D] and [D, 1]) for the parts present; ``used``/``ignored`` are one line each.

    Raises:
      ValueError: a half-present or mis-shaped layer (named).
    """
    names = HEAD_TENSORS[model_type]
    params, used, ignored = {}, [], []
    for part, name in names.items():
        weight, bias = tensors.get(f"{name}.weight"), tensors.get(f"{name}.bias")
        if weight is None and bias is None:
            continue
        if weight is None or bias is None:
            missing = f"{name}.weight" if weight is None else f"{name}.bias"
            raise ValueError(f"{source}: incomplete layer {name!r}, missing tensor {missing!r}")
        weight = np.asarray(weight, np.float32)
        if weight.ndim != 2 or weight.shape[1] != hidden_size or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"{source}: tensors {name!r} have shapes {weight.shape} and {tuple(bias.shape)}, expected "
                f"[n, {hidden_size}] and [n]"
            )
        if part == "pooler" and weight.shape[0] != hidden_size:
            raise ValueError(
                f"{source}: tensor '{name}.weight' has shape {weight.shape}, expected {(hidden_size,) * 2}"
            )
        if part == "score" and weight.shape[0] != 1:
            ignored.append(f"{name}.* ({weight.shape[0]} labels; the reranker's score layer has one)")
            continue
        params[part] = {"kernel": np.ascontiguousarray(weight.T), "bias": np.asarray(bias, np.float32)}
        used.append(f"{name}.* as the head's {part}")
    return params, used, ignored


def head_to_tensors(model_type: str, head_params: dict) -> dict[str, np.ndarray]:
    """The head's ``{"pooler", "score"}`` parameters as sequence-classification tensors (float32, torch layout)."""
    names = HEAD_TENSORS[model_type]
    out = {}
    for part in ("pooler", "score"):
        if part not in head_params:
            raise ValueError(f"head_params: missing {part!r} (got {sorted(head_params)})")
        layer = head_params[part]
        out[f"{names[part]}.weight"] = np.ascontiguousarray(np.asarray(layer["kernel"], np.float32).T)
        out[f"{names[part]}.bias"] = np.ascontiguousarray(np.asarray(layer["bias"], np.float32))
    return out


def classification_config(encoder_config: dict[str, Any], *, dropout: float | None = None) -> dict[str, Any]:
    """``config.json`` of a one-label classifier: the encoder's config, its architecture and the label fields.

    Args:
      encoder_config: :meth:`hnjax.models.EncoderConfig.to_dict` output.
      dropout: the head's dropout rate, written as ``classifier_dropout`` (None: the encoder's hidden dropout).
    """
    model_type = encoder_config["model_type"]
    out = dict(encoder_config)
    out.update(
        architectures=[ARCHITECTURES[model_type]],
        num_labels=1,
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
        classifier_dropout=dropout,
        # sentence-transformers CrossEncoder: raw scores (its default for one label is a sigmoid).
        sentence_transformers={"activation_fn": IDENTITY},
        sbert_ce_default_activation_function=IDENTITY,  # the same, for sentence-transformers < 4
    )
    return out
