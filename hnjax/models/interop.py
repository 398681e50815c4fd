"""Whole checkpoints in the layouts the PyTorch ecosystem deploys, both ways.

Out of hnjax:

- :func:`save_sentence_transformer`: an encoder plus its embedding pipeline (pooling, Dense, Normalize) as a
  sentence-transformers folder, so that ``SentenceTransformer(path).encode(sentences)`` gives hnjax's vectors;
  ``transformers.AutoModel`` still loads the encoder at the root.
- :func:`save_cross_encoder`: an encoder plus a :class:`hnjax.models.poolers.CrossEncoderHead` as a one-label
  ``*ForSequenceClassification`` checkpoint, which ``transformers.AutoModelForSequenceClassification`` and
  sentence-transformers' ``CrossEncoder`` load with the same scores.

Into hnjax: :func:`load_pretrained` reads any of these (and plain Hugging Face checkpoints, old-layout
sentence-transformers folders with the encoder in ``0_Transformer``, and sequence-classification checkpoints) and
says what it used and what it ignored.

References:
  sentence-transformers: ``SentenceTransformer`` folder layout (``modules.json``), ``CrossEncoder``.
  Hugging Face transformers: ``BertForSequenceClassification``, ``RobertaForSequenceClassification``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import pathlib
import shutil
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import numpy as safetensors_numpy

from hnjax.data import pretrained
from hnjax.models import bert, loading, poolers, seq_cls, st_format

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
    """What :func:`load_pretrained` found in a checkpoint.

    Attributes:
      model: the encoder module.
      params: its float32 parameters.
      pipeline: the sentence-transformers embedding pipeline (pooling, Dense, Normalize), or None when the folder
        has no ``modules.json``.
      head: cross-encoder head layers found (``"pooler"`` and/or ``"score"``, ``{"kernel", "bias"}``), for
        :func:`hnjax.models.init_cross_encoder_head`; empty when none.
      used: one line per part of the checkpoint hnjax uses.
      ignored: one line per part it does not use.
    """

    model: bert.BertModel
    params: dict
    pipeline: st_format.SentencePipeline | None
    head: dict
    used: tuple[str, ...]
    ignored: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        """JSON-ready record: ``{"pipeline", "head", "used", "ignored"}``."""
        return {
            "pipeline": None if self.pipeline is None else self.pipeline.describe(),
            "head": sorted(self.head),
            "used": list(self.used),
            "ignored": list(self.ignored),
        }


def _tensor_groups(names) -> list[str]:
    """Tensor names grouped by their first two components, e.g. ``cls.predictions.* (5 tensors)``."""
    groups: dict[str, int] = {}
    for name in names:
        key = ".".join(name.split(".")[:2])
        groups[key] = groups.get(key, 0) + 1
    return [f"{k}.* ({n} tensor{'s' * (n > 1)})" for k, n in sorted(groups.items())]


def load_pretrained(name_or_path: str | os.PathLike, *, dtype: Any = jnp.float32, remat: bool = False) -> Pretrained:
    """Loads an encoder and whatever the checkpoint declares around it, and reports what was used and ignored.

    Understands plain Hugging Face checkpoints (``BertModel``, ``RobertaModel``, task models such as
    ``BertForMaskedLM``), sentence-transformers folders (``modules.json``: pooling, Dense, Normalize; the encoder
    at the root or in ``0_Transformer``) and one-label sequence classifiers (pooler + classifier → the cross-encoder
    head). The report is logged at INFO and kept in :attr:`Pretrained.used` / :attr:`Pretrained.ignored`.

    Args:
      name_or_path: checkpoint folder or a name known to :func:`hnjax.models.resolve_checkpoint`.
      dtype: compute dtype of the encoder.
      remat: recompute layer activations in the backward pass.

    Returns:
      A :class:`Pretrained`.

    Raises:
      FileNotFoundError, ValueError: as :func:`hnjax.models.from_pretrained`; a ``modules.json`` module that
        changes the vectors and that hnjax cannot reproduce.

    Example:
      >>> pre = load_pretrained("all-MiniLM-L6-v2")  # doctest: +SKIP
      >>> pre.pipeline.describe()  # doctest: +SKIP
      'pooling mean → Normalize'
    """
    directory = pretrained.resolve_checkpoint(name_or_path)
    folder = st_format.read_folder(directory)
    config, params, tensors = loading.load_encoder(folder.encoder_dir)
    head, head_used, head_ignored = seq_cls.head_from_tensors(
        tensors, config.model_type, config.hidden_size, source=str(folder.encoder_dir)
    )
    encoder_names = {spec.hf_name for spec in loading.hf_name_map(config)}
    head_names = {f"{seq_cls.HEAD_TENSORS[config.model_type][part]}.{w}" for part in head for w in ("weight", "bias")}
    rest = [n for n in tensors if n not in encoder_names | head_names and n not in loading.IGNORED_NAMES]
    if config.model_type == "roberta":  # RoBERTa's unused pooler; BERT's is the head's pooler when present
        rest = [n for n in rest if not (n.startswith("pooler.") and "pooler" not in head)]
    used = [f"encoder: {config.model_type}, {config.num_hidden_layers} layers, width {config.hidden_size}"]
    used += list(folder.used[1:]) + head_used
    ignored = list(folder.ignored) + head_ignored + [f"{g} (not used by hnjax)" for g in _tensor_groups(rest)]
    result = Pretrained(
        bert.BertModel(config, dtype=dtype, remat=remat), params, folder.pipeline, head, tuple(used), tuple(ignored)
    )
    logger.info("loaded %s: used %s; ignored %s", directory, "; ".join(used), "; ".join(ignored) or "nothing")
    return result


def _versions() -> dict[str, str]:
    out = {}
    for package in ("hnjax", "jax", "flax", "transformers"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def save_sentence_transformer(
    path: str | os.PathLike,
    config: bert.EncoderConfig,
    params: dict,
    pipeline: st_format.SentencePipeline,
    *,
    tokenizer_from: str | os.PathLike,
    pooler: dict | None = None,
) -> pathlib.Path:
    """Writes a sentence-transformers folder: the encoder at the root plus ``modules.json`` and module folders.

    ``SentenceTransformer(path).encode(sentences)`` then computes ``pipeline.apply(encoder(tokens), mask)`` with
    sentences truncated to ``pipeline.max_seq_length`` tokens; :func:`load_pretrained` reads it back.

    Args:
      path: output folder (created).
      config: encoder hyperparameters.
      params: encoder parameters.
      pipeline: pooling, Dense layers, normalisation, max_seq_length and similarity of the embedding.
      tokenizer_from: checkpoint whose tokenizer files are copied (the tokenizer the encoder was trained with).
      pooler: optional BERT pooler ``{"kernel", "bias"}`` written as ``pooler.dense.*``; the pipeline does not use
        it, but without it ``transformers.AutoModel`` reports the pooler as newly initialised.

    Returns:
      The output folder.
    """
    out = loading.save_pretrained(path, config, params, tokenizer_from=tokenizer_from, pooler=pooler)
    for stale in out.glob("[0-9]*_*"):  # module folders of an earlier save to the same place
        if stale.is_dir():
            shutil.rmtree(stale)
    st_format.write_modules(out, pipeline, hidden_size=config.hidden_size, versions=_versions())
    logger.info("saved sentence-transformers folder %s (%s)", out, pipeline.describe())
    return out


def check_plain(obj: Any, allowed: tuple[str, ...], what: str) -> None:
    """Raises when a dataclass field outside ``allowed`` differs from its default: an option the export cannot carry."""
    for field in dataclasses.fields(obj):
        if field.name in allowed:
            continue
        default = field.default if field.default is not dataclasses.MISSING else dataclasses.MISSING
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        if default is dataclasses.MISSING or getattr(obj, field.name) != default:
            raise ValueError(
                f"{what}.{field.name}={getattr(obj, field.name)!r}: a one-label sequence classifier cannot represent "
                "this option; only the plain cross-encoder score exports"
            )


def save_cross_encoder(
    path: str | os.PathLike,
    config: bert.EncoderConfig,
    encoder_params: dict,
    head: poolers.CrossEncoderHead,
    head_params: dict,
    *,
    tokenizer_from: str | os.PathLike,
    max_length: int | None = None,
) -> pathlib.Path:
    """Writes a cross-encoder as a one-label sequence classifier (``Bert``/``RobertaForSequenceClassification``).

    ``transformers.AutoModelForSequenceClassification.from_pretrained(path)`` gives ``logits[:, 0]`` equal to the
    head's score, and sentence-transformers' ``CrossEncoder(path).predict(pairs)`` the same (``config.json`` sets
    its activation to ``Identity``). :func:`hnjax.models.init_cross_encoder_head` with ``checkpoint=path`` and
    :func:`hnjax.models.from_pretrained` read it back.

    Args:
      path: output folder (created).
      config: encoder hyperparameters.
      encoder_params: encoder parameters.
      head: the head module; only ``pooling="cls"`` exists in those libraries.
      head_params: ``{"pooler", "score"}``; any other parameter makes a score they cannot compute.
      tokenizer_from: checkpoint whose tokenizer files are copied.
      max_length: pair length the model was trained with, written as the tokenizer's ``model_max_length`` (what
        ``CrossEncoder`` truncates to); None keeps the tokenizer's.

    Returns:
      The output folder.

    Raises:
      ValueError: a head these libraries cannot represent (mean pooling, extra parameters).
    """
    if head.pooling != "cls":
        raise ValueError(
            f"head.pooling={head.pooling!r}: a sequence classifier scores the [CLS] state through the pooler; a "
            "head over the masked mean has no transformers / sentence-transformers equivalent (export the encoder "
            "with save_pretrained and rebuild the head yourself)"
        )
    extra = sorted(set(head_params) - {"pooler", "score"})
    if extra:
        raise ValueError(f"head_params: {extra} are not part of a one-label sequence classifier's head")
    check_plain(head, ("dropout_rate", "pooling", "dtype", "parent", "name"), "head")
    prefix = seq_cls.PREFIXES[config.model_type]
    tensors = {prefix + name: value for name, value in loading.params_to_hf(encoder_params, config).items()}
    head_tensors = seq_cls.head_to_tensors(config.model_type, head_params)
    if config.model_type == "bert":
        head_tensors = {(prefix + k if k.startswith("pooler.") else k): v for k, v in head_tensors.items()}
    tensors.update(head_tensors)
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / loading.CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(seq_cls.classification_config(config.to_dict(), dropout=head.dropout_rate), f, indent=2)
        f.write("\n")
    safetensors_numpy.save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / loading.WEIGHTS_FILE),
        metadata={"format": "pt"},
    )  # fmt: skip
    source = pretrained.resolve_checkpoint(tokenizer_from)
    source = st_format.encoder_dir(source)
    copied = [name for name in loading.TOKENIZER_FILES if (source / name).is_file()]
    if not copied:
        raise FileNotFoundError(f"tokenizer_from: no tokenizer files in {source}")
    for name in copied:
        shutil.copyfile(source / name, out / name)
    if max_length is not None and (out / "tokenizer_config.json").is_file():
        tok_config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
        tok_config["model_max_length"] = int(max_length)
        (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    logger.info("saved cross-encoder (%s, one label) to %s", seq_cls.ARCHITECTURES[config.model_type], out)
    return out
