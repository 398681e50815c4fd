"""Hugging Face checkpoints ↔ hnjax encoder parameters, without torch.

A checkpoint is a directory with ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``), as written by ``transformers``' ``save_pretrained``. Conversion is a declarative
name map, one :class:`ParamSpec` per tensor: our parameter path, the Hugging Face tensor name, and a per-tensor
transform (a Linear's [out, in] weight is our [in, out] kernel), in the style of MaxText's checkpoint converters.

References:
  Hugging Face transformers, ``BertModel`` / ``RobertaModel`` state-dict names.
  MaxText, ``MaxText/llama_or_mistral_ckpt.py`` (declarative checkpoint conversion).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as safetensors_numpy

from hnjax.data import pretrained
from hnjax.models import bert, poolers, seq_cls, st_format

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)
# Prefixes of task models (BertForMaskedLM, RobertaForSequenceClassification, ...) around the base encoder.
HF_PREFIXES = ("bert.", "roberta.")
# Tensors of heads and buffers the encoder does not use: ignored, listed at debug level.
IGNORED_PREFIXES = ("pooler.", "cls.", "lm_head.", "classifier.", "qa_outputs.")
IGNORED_NAMES = ("embeddings.position_ids", "embeddings.token_type_ids")

# name → (checkpoint tensor → ours, ours → checkpoint tensor).
TRANSFORMS = {
    "identity": (lambda x: x, lambda x: x),
    "transpose": (np.transpose, np.transpose),  # torch Linear weight [out, in] ↔ flax Dense kernel [in, out].
}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One entry of the name map.

    Attributes:
      path: our parameter path inside the ``params`` tree.
      hf_name: the tensor name in a Hugging Face base-model checkpoint (no "bert."/"roberta." prefix).
      transform: a key of ``TRANSFORMS``.
    """

    path: tuple[str, ...]
    hf_name: str
    transform: str = "identity"


def _dense(path: tuple[str, ...], hf: str) -> list[ParamSpec]:
    return [ParamSpec(path + ("kernel",), f"{hf}.weight", "transpose"), ParamSpec(path + ("bias",), f"{hf}.bias")]


def _norm(path: tuple[str, ...], hf: str) -> list[ParamSpec]:
    return [ParamSpec(path + ("scale",), f"{hf}.weight"), ParamSpec(path + ("bias",), f"{hf}.bias")]


def hf_name_map(config: bert.EncoderConfig) -> tuple[ParamSpec, ...]:
    """The declarative map between :class:`hnjax.models.BertModel` parameters and Hugging Face tensors.

    Args:
      config: encoder hyperparameters (the number of layers).

    Returns:
      One :class:`ParamSpec` per parameter of the encoder.
    """
    specs = [
        ParamSpec(("embeddings", "word_embeddings", "embedding"), "embeddings.word_embeddings.weight"),
        ParamSpec(("embeddings", "position_embeddings", "embedding"), "embeddings.position_embeddings.weight"),
        ParamSpec(("embeddings", "token_type_embeddings", "embedding"), "embeddings.token_type_embeddings.weight"),
        *_norm(("embeddings", "layer_norm"), "embeddings.LayerNorm"),
    ]
    for i in range(config.num_hidden_layers):
        ours, hf = (f"layer_{i}",), f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            specs += _dense(ours + ("attention", name), f"{hf}.attention.self.{name}")
        specs += _dense(ours + ("attention", "output"), f"{hf}.attention.output.dense")
        specs += _norm(ours + ("attention_norm",), f"{hf}.attention.output.LayerNorm")
        specs += _dense(ours + ("intermediate",), f"{hf}.intermediate.dense")
        specs += _dense(ours + ("output",), f"{hf}.output.dense")
        specs += _norm(ours + ("output_norm",), f"{hf}.output.LayerNorm")
    return tuple(specs)


POOLER_MAP = tuple(_dense((), "pooler.dense"))


def load_safetensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every tensor of ``model.safetensors`` (or of the shards listed in ``model.safetensors.index.json``).

    Args:
      directory: checkpoint directory.

    Returns:
      Tensor name → NumPy array.

    Raises:
      FileNotFoundError: no weights file.
    """
    directory = pathlib.Path(directory)
    single, index = directory / WEIGHTS_FILE, directory / WEIGHTS_INDEX_FILE
    if single.is_file():
        return safetensors_numpy.load_file(str(single))
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(safetensors_numpy.load_file(str(directory / shard)))
        return tensors
    raise FileNotFoundError(
        f"{single} not found (nor {index.name}); hnjax reads safetensors weights only — convert a pytorch_model.bin "
        "with transformers' save_pretrained(..., safe_serialization=True)"
    )


def _strip_prefixes(tensors: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    out = {}
    for name, value in tensors.items():
        short = name
        for prefix in HF_PREFIXES:
            if name.startswith(prefix):
                short = name[len(prefix) :]
                break
        if short in out:
            raise ValueError(f"{source}: tensor {short!r} appears twice (with and without a model prefix)")
        out[short] = value
    return out


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def param_shapes(config: bert.EncoderConfig) -> dict:
    """Shapes of the encoder parameters, without allocating them: nested dict of ``jax.ShapeDtypeStruct``."""
    return jax.eval_shape(lambda: bert.init_params(config, jax.random.key(0)))


def params_from_hf(tensors: dict[str, np.ndarray], config: bert.EncoderConfig, *, source: str = "checkpoint") -> dict:
    """Converts Hugging Face tensors to the encoder's ``params`` tree.

    Args:
      tensors: tensor name → array, with or without a "bert."/"roberta." prefix.
      config: encoder hyperparameters.
      source: name used in error messages (the weights file).

    Returns:
      Nested dict of float32 ``jax.Array``.

    Raises:
      ValueError: naming every missing, mis-shaped or unexpected encoder tensor.
    """
    tensors = _strip_prefixes(tensors, source)
    shapes = param_shapes(config)
    params, used, problems = {}, set(), []
    for spec in hf_name_map(config):
        if spec.hf_name not in tensors:
            problems.append(f"missing tensor {spec.hf_name!r}")
            continue
        used.add(spec.hf_name)
        value = TRANSFORMS[spec.transform][0](np.asarray(tensors[spec.hf_name], dtype=np.float32))
        expected = tuple(_get(shapes, spec.path).shape)
        if value.shape != expected:
            hf_shape = tuple(tensors[spec.hf_name].shape)
            hf_expected = tuple(TRANSFORMS[spec.transform][1](np.empty(expected, np.bool_)).shape)
            problems.append(f"tensor {spec.hf_name!r} has shape {hf_shape}, expected {hf_expected}")
            continue
        _set(params, spec.path, jnp.asarray(value))
    ignored = []
    for name in sorted(set(tensors) - used):
        if name in IGNORED_NAMES or name.startswith(IGNORED_PREFIXES):
            ignored.append(name)
        elif name.startswith(("embeddings.", "encoder.")):
            problems.append(f"unexpected encoder tensor {name!r} (does config.json match the weights?)")
        else:
            ignored.append(name)
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
    if ignored:
        logger.debug("%s: ignored %d tensors not used by the encoder: %s", source, len(ignored), ", ".join(ignored))
    return params


def params_to_hf(params: dict, config: bert.EncoderConfig) -> dict[str, np.ndarray]:
    """Converts the encoder's ``params`` tree to Hugging Face base-model tensor names (float32 NumPy arrays).

    Raises:
      ValueError: a parameter of the name map is missing from ``params`` or mis-shaped.
    """
    shapes = param_shapes(config)
    out = {}
    for spec in hf_name_map(config):
        try:
            value = np.asarray(_get(params, spec.path), dtype=np.float32)
        except (KeyError, TypeError):
            raise ValueError(f"params: missing parameter {'/'.join(spec.path)}") from None
        expected = tuple(_get(shapes, spec.path).shape)
        if value.shape != expected:
            raise ValueError(f"params: {'/'.join(spec.path)} has shape {value.shape}, expected {expected}")
        out[spec.hf_name] = np.ascontiguousarray(TRANSFORMS[spec.transform][1](value))
    return out


def load_encoder(directory: pathlib.Path) -> tuple[bert.EncoderConfig, dict, dict[str, np.ndarray]]:
    """``(config, params, tensors)`` of the encoder checkpoint in ``directory`` (tensors: all, prefixes removed).

    Raises:
      FileNotFoundError: no config.json or weights.
      ValueError: unknown model_type, or a missing / mis-shaped tensor (named).
    """
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: a checkpoint directory needs config.json")
    config = bert.EncoderConfig.from_json(config_path)
    tensors = _strip_prefixes(load_safetensors(directory), str(directory))
    return config, params_from_hf(tensors, config, source=str(directory)), tensors


def from_pretrained(
    name_or_path: str | os.PathLike, *, dtype: Any = jnp.float32, remat: bool = False
) -> tuple[bert.BertModel, dict]:
    """Loads a BERT-family encoder from a local Hugging Face checkpoint.

    Args:
      name_or_path: checkpoint directory or a name known to :func:`hnjax.data.pretrained.resolve_checkpoint`.
      dtype: compute dtype (float32 or bfloat16); parameters are float32 either way.
      remat: recompute layer activations in the backward pass.

    Returns:
      ``(model, params)``: a :class:`hnjax.models.BertModel` and its float32 ``params`` tree.

    Raises:
      FileNotFoundError: no config.json or weights.
      ValueError: unknown model_type, or a missing / mis-shaped tensor (named).

    Example:
      >>> model, params = from_pretrained("all-MiniLM-L6-v2")  # doctest: +SKIP
      >>> hidden = model.apply({"params": params}, ids, mask)  # doctest: +SKIP
    """
    root = pretrained.resolve_checkpoint(name_or_path)
    directory = st_format.encoder_dir(root)
    config, params, _ = load_encoder(directory)
    logger.info(
        "loaded %s encoder from %s: %d layers, width %d",
        config.model_type,
        directory,
        config.num_hidden_layers,
        config.hidden_size,
    )
    if directory != root or (root / st_format.MODULES_FILE).is_file():
        try:
            described = st_format.read_folder(root).pipeline.describe()
        except ValueError as err:
            described = f"with modules hnjax cannot apply: {err}"
        logger.info(
            "%s is a sentence-transformers folder (%s); from_pretrained returns the encoder only: "
            "hnjax.models.load_pretrained(...).pipeline embeds as it does",
            name_or_path,
            described,
        )
    return bert.BertModel(config, dtype=dtype, remat=remat), params


def load_pooler(name_or_path: str | os.PathLike) -> dict | None:
    """The BERT pooler (dense layer on [CLS]) of a checkpoint, if it has one.

    Returns:
      ``{"kernel": [D, D], "bias": [D]}`` float32 arrays, or None when the checkpoint has no pooler tensors.

    Raises:
      ValueError: only one of the two pooler tensors is present.
    """
    directory = st_format.encoder_dir(pretrained.resolve_checkpoint(name_or_path))
    tensors = _strip_prefixes(load_safetensors(directory), str(directory))
    present = [spec.hf_name in tensors for spec in POOLER_MAP]
    if not any(present):
        return None
    if not all(present):
        missing = [spec.hf_name for spec in POOLER_MAP if spec.hf_name not in tensors]
        raise ValueError(f"{directory}: incomplete pooler, missing tensor {missing[0]!r}")
    out = {}
    for spec in POOLER_MAP:
        value = np.asarray(tensors[spec.hf_name], dtype=np.float32)
        out[spec.path[-1]] = jnp.asarray(TRANSFORMS[spec.transform][0](value))
    return out


def load_head(name_or_path: str | os.PathLike, config: bert.EncoderConfig) -> tuple[dict, list[str], list[str]]:
    """The cross-encoder head layers a checkpoint holds: BERT's pooler, a one-label classifier (or RoBERTa's head).

    Returns:
      ``(params, used, ignored)``: ``params`` with ``"pooler"`` and/or ``"score"`` (``{"kernel", "bias"}``
      float32 NumPy), and one line per tensor group used or ignored (see :mod:`hnjax.models.seq_cls`).
    """
    directory = st_format.encoder_dir(pretrained.resolve_checkpoint(name_or_path))
    tensors = _strip_prefixes(load_safetensors(directory), str(directory))
    return seq_cls.head_from_tensors(tensors, config.model_type, config.hidden_size, source=str(directory))


def init_cross_encoder_head(
    config: bert.EncoderConfig,
    key: jax.Array,
    *,
    checkpoint: str | os.PathLike | None = None,
    dropout_rate: float | None = None,
    pooling: str = "cls",
) -> tuple[poolers.CrossEncoderHead, dict]:
    """Builds a cross-encoder head; its layers start from the checkpoint's when present.

    A BERT checkpoint's ``pooler.dense`` becomes the head's pooler; a one-label sequence classifier's
    ``classifier`` (RoBERTa: ``classifier.dense`` and ``classifier.out_proj``) the pooler and score layer, so a
    cross-encoder checkpoint (e.g. written by :func:`hnjax.models.interop.save_cross_encoder`) resumes as it was.
    What was taken, what starts random and what was ignored is logged.

    Args:
      config: encoder hyperparameters (width D, default dropout).
      key: PRNG key for the parameters not found in the checkpoint.
      checkpoint: optional checkpoint directory or known name to take the head's layers from.
      dropout_rate: dropout before the score layer; defaults to ``config.hidden_dropout_prob``.
      pooling: what the pooler reads: ``"cls"`` (BERT's pooled output) or ``"mean"`` (masked mean of the states).

    Returns:
      ``(head, params)``.
    """
    rate = config.hidden_dropout_prob if dropout_rate is None else dropout_rate
    head = poolers.CrossEncoderHead(dropout_rate=rate, pooling=pooling)
    params = dict(head.init(key, jnp.zeros((1, 1, config.hidden_size), jnp.float32), jnp.ones((1, 1), bool))["params"])
    if checkpoint is not None:
        found, used, ignored = load_head(checkpoint, config)
        for part, layer in found.items():
            params[part] = {k: jnp.asarray(v) for k, v in layer.items()}
        fresh = [part for part in ("pooler", "score") if part not in found]
        logger.info(
            "cross-encoder head from %s: %s; random: %s%s",
            checkpoint,
            "; ".join(used) or "nothing",
            ", ".join(fresh) or "nothing",
            f"; ignored: {'; '.join(ignored)}" if ignored else "",
        )
    return head, params


def save_pretrained(
    path: str | os.PathLike,
    config: bert.EncoderConfig,
    params: dict,
    *,
    tokenizer_from: str | os.PathLike | None = None,
    pooler: dict | None = None,
) -> pathlib.Path:
    """Writes a checkpoint that :func:`from_pretrained` and ``transformers.AutoModel`` both load.

    Args:
      path: output directory (created).
      config: encoder hyperparameters, written as ``config.json``.
      params: encoder ``params`` tree, written as ``model.safetensors`` under Hugging Face names.
      tokenizer_from: a checkpoint directory (or known name) whose tokenizer files are copied along.
      pooler: optional ``{"kernel", "bias"}`` of a trained BERT pooler (e.g. a :class:`CrossEncoderHead`'s
        ``params["pooler"]``), written as ``pooler.dense.*``.

    Returns:
      The output directory.
    """
    out = pathlib.Path(path)
    tensors = params_to_hf(params, config)
    if pooler is not None:
        for spec in POOLER_MAP:
            tensors[spec.hf_name] = np.ascontiguousarray(
                TRANSFORMS[spec.transform][1](np.asarray(pooler[spec.path[-1]], dtype=np.float32))
            )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)
        f.write("\n")
    # transformers refuses safetensors files without a "format" entry in the metadata.
    safetensors_numpy.save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer_from is not None:
        source = pretrained.resolve_checkpoint(tokenizer_from)
        copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
        if not copied:
            raise FileNotFoundError(f"tokenizer_from: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {source}")
        for name in copied:
            shutil.copyfile(source / name, out / name)
    logger.info("saved %s encoder to %s", config.model_type, out)
    return out
