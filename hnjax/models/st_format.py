"""The sentence-transformers folder layout: the embedding pipeline that sits on top of an encoder.

A sentence-transformers folder is a Hugging Face checkpoint (``config.json`` + weights + tokenizer) plus
``modules.json``, which lists the modules applied in order, each with its own sub-folder:

==============================================  =========================================================
module (``modules.json`` "type")                what it holds
==============================================  =========================================================
``sentence_transformers.models.Transformer``    the encoder (path "" or, in old folders, ``0_Transformer``);
                                                ``sentence_bert_config.json``: ``max_seq_length``
``sentence_transformers.models.Pooling``        ``1_Pooling/config.json``: the pooling mode(s)
``sentence_transformers.models.Dense``          ``2_Dense/config.json`` (in/out features, bias, activation) and
                                                ``2_Dense/model.safetensors`` (``linear.weight`` [out, in],
                                                ``linear.bias`` [out])
``sentence_transformers.models.Normalize``      nothing (L2 normalisation)
``sentence_transformers.models.Dropout``        nothing used at inference
==============================================  =========================================================

This module reads such a folder into a :class:`SentencePipeline` (pooling → Dense layers → optional L2
normalisation, evaluated in JAX by :meth:`SentencePipeline.apply`) and writes one. It does no encoder IO: see
:mod:`hnjax.models.interop` for whole checkpoints. Pooling configs are written with the keys every
sentence-transformers release reads (``word_embedding_dimension``, ``pooling_mode_*_token(s)``), and read in both
the old and the new (``embedding_dimension``, ``pooling_mode``) spelling.

References:
  Reimers & Gurevych (2019), Sentence-BERT; sentence-transformers ``models/Pooling.py``, ``models/Dense.py``,
  ``models/Normalize.py`` and ``SentenceTransformer._load_sbert_model`` (folder layout).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as safetensors_numpy

from hnjax import scorers
from hnjax.models import poolers

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "sentence_bert_config.json"
ST_MODEL_CONFIG_FILE = "config_sentence_transformers.json"
MODULE_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
}
# Modules that do nothing at inference.
INERT_MODULES = ("Dropout",)
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Old config keys → mode, in the order sentence-transformers concatenates them.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Our activation name → (torch class path written to Dense configs, JAX function).
DENSE_ACTIVATIONS = {
    "tanh": ("torch.nn.modules.activation.Tanh", jnp.tanh),
    "identity": ("torch.nn.modules.linear.Identity", lambda x: x),
    "relu": ("torch.nn.modules.activation.ReLU", jax.nn.relu),
    "sigmoid": ("torch.nn.modules.activation.Sigmoid", jax.nn.sigmoid),
    "gelu": ("torch.nn.modules.activation.GELU", lambda x: jax.nn.gelu(x, approximate=False)),
}
SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")


@dataclasses.dataclass(frozen=True, eq=False)
class DenseLayer:
    """One sentence-transformers ``Dense`` module: y = act(x W + b).

    Attributes:
      kernel: [D_in, D_out] float32 (the transpose of torch's ``linear.weight``).
      bias: [D_out] float32, or None (``bias: false``).
      activation: a key of ``DENSE_ACTIVATIONS``.
    """

    kernel: np.ndarray
    bias: np.ndarray | None = None
    activation: str = "tanh"

    def __post_init__(self):
        if self.activation not in DENSE_ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(DENSE_ACTIVATIONS)}, got {self.activation!r}")
        if np.ndim(self.kernel) != 2:
            raise ValueError(f"kernel: expected shape [D_in, D_out], got {np.shape(self.kernel)}")
        if self.bias is not None and np.shape(self.bias) != (np.shape(self.kernel)[1],):
            raise ValueError(f"bias: expected shape ({np.shape(self.kernel)[1]},), got {np.shape(self.bias)}")


@dataclasses.dataclass(frozen=True, eq=False)
class SentencePipeline:
    """From token states to a sentence vector: v = normalize?(dense_k(…dense_1(concat_modes pool(h, mask)))).

    Attributes:
      pooling: pooling modes, concatenated in this order (each of ``POOLING_MODES``).
      dense: Dense layers applied in order after pooling.
      normalize: L2-normalise the result (sentence-transformers' ``Normalize``).
      max_seq_length: tokens per sentence the folder's model truncates to (None: the tokenizer's limit).
      similarity: the similarity the vectors are meant for (one of ``SIMILARITIES``), or None (unstated).
    """

    pooling: tuple[str, ...] = ("mean",)
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = False
    max_seq_length: int | None = None
    similarity: str | None = None

    def __post_init__(self):
        if isinstance(self.pooling, str):
            object.__setattr__(self, "pooling", (self.pooling,))
        object.__setattr__(self, "dense", tuple(self.dense))
        if not self.pooling or any(mode not in POOLING_MODES for mode in self.pooling):
            raise ValueError(f"pooling: expected modes among {POOLING_MODES}, got {self.pooling!r}")
        if self.max_seq_length is not None and (not isinstance(self.max_seq_length, int) or self.max_seq_length < 2):
            raise ValueError(f"max_seq_length: expected an integer >= 2 or None, got {self.max_seq_length!r}")
        if self.similarity is not None and self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity: expected one of {SIMILARITIES} or None, got {self.similarity!r}")

    def output_width(self, hidden_size: int) -> int:
        """Width of the sentence vector for an encoder of width ``hidden_size``."""
        return int(self.dense[-1].kernel.shape[1]) if self.dense else len(self.pooling) * hidden_size

    def apply(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
        """Sentence vectors of right-padded token states.

        Args:
          hidden: [B, L, D] token states.
          mask: [B, L] bool (or 0/1), true for real tokens.

        Returns:
          [B, D'] float32.
        """
        v = jnp.concatenate([pool(mode, hidden, mask) for mode in self.pooling], axis=-1)  # [B, modes·D]
        for layer in self.dense:
            v = jnp.einsum("bi,io->bo", v, jnp.asarray(layer.kernel), preferred_element_type=jnp.float32)
            if layer.bias is not None:
                v = v + jnp.asarray(layer.bias)
            v = DENSE_ACTIVATIONS[layer.activation][1](v)
        if self.normalize:  # sentence-transformers' Normalize is F.normalize: eps 1e-12 on the norm
            v = scorers.l2_normalize(v, eps=1e-12)
        return v

    def describe(self) -> str:
        """One line, e.g. ``pooling cls → Dense 384→256 tanh → Normalize``."""
        parts = ["pooling " + "+".join(self.pooling)]
        parts += [f"Dense {d.kernel.shape[0]}→{d.kernel.shape[1]} {d.activation}" for d in self.dense]
        if self.normalize:
            parts.append("Normalize")
        return " → ".join(parts)


def pool(mode: str, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """One sentence-transformers pooling mode over right-padded token states, in float32.

    cls: h_0; mean: Σ m h / max(Σ m, 1e-9); max: max over real tokens; mean_sqrt_len_tokens: Σ m h / √max(Σ m, 1e-9);
    weightedmean: Σ_l l·m_l h_l / Σ_l l·m_l (positions l = 1..L); lasttoken: the last real token's state.

    Args:
      mode: one of ``POOLING_MODES``.
      hidden: [B, L, D]; mask: [B, L] bool (or 0/1).

    Returns:
      [B, D] float32.
    """
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden, mask: expected shapes [B, L, D] and [B, L], got {hidden.shape} and {mask.shape}")
    h = hidden.astype(jnp.float32)
    m = mask.astype(bool)
    mf = m.astype(jnp.float32)
    if mode == "cls":
        return poolers.cls(h, m)
    if mode == "mean":
        return poolers.mean(h, m)
    if mode == "mean_sqrt_len_tokens":
        return jnp.einsum("bld,bl->bd", h, mf) / jnp.sqrt(jnp.maximum(mf.sum(axis=1), 1e-9))[:, None]
    if mode == "max":
        return jnp.where(m[..., None], h, -jnp.inf).max(axis=1)
    if mode == "weightedmean":
        weights = mf * jnp.arange(1, h.shape[1] + 1, dtype=jnp.float32)  # [B, L]
        return jnp.einsum("bld,bl->bd", h, weights) / jnp.maximum(weights.sum(axis=1), 1e-9)[:, None]
    if mode == "lasttoken":
        last = jnp.maximum(m.sum(axis=1) - 1, 0)  # [B]
        return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0] * m.any(axis=1)[:, None]
    raise ValueError(f"mode: expected one of {POOLING_MODES}, got {mode!r}")


# ------------------------------------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class FolderInfo:
    """What :func:`read_folder` found.

    Attributes:
      encoder_dir: the folder holding the encoder's ``config.json`` and weights.
      pipeline: the embedding pipeline declared by ``modules.json``, or None for a plain Hugging Face checkpoint.
      used: one line per piece of the folder that the pipeline reproduces.
      ignored: one line per piece that has no effect on the vectors hnjax computes (or that hnjax does not apply).
    """

    encoder_dir: pathlib.Path
    pipeline: SentencePipeline | None
    used: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()


def _read_json(path: pathlib.Path, *, default: Any = None) -> Any:
    if not path.is_file():
        if default is not None:
            return default
        raise FileNotFoundError(f"{path} not found")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None


def _module_kind(entry: Any, source: str, index: int) -> tuple[str, str]:
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) or "path" not in entry:
        raise ValueError(f"{source}: entry {index}: expected an object with 'type' and 'path', got {entry!r}")
    return entry["type"].rsplit(".", 1)[-1], str(entry["path"])


def read_pooling(directory: pathlib.Path) -> tuple[str, ...]:
    """Pooling modes of a ``Pooling`` module folder (old or new config keys)."""
    path = directory / "config.json"
    raw = _read_json(path)
    if "pooling_mode" in raw:
        modes = raw["pooling_mode"]
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
    else:
        modes = tuple(mode for key, mode in LEGACY_POOLING_KEYS.items() if raw.get(key))
        modes = modes or ("mean",)  # sentence-transformers' default when no mode is set
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise ValueError(f"{path}: field 'pooling_mode': unsupported mode(s) {bad or modes}; hnjax has {POOLING_MODES}")
    if raw.get("include_prompt") is False:
        raise ValueError(f"{path}: field 'include_prompt': false (prompt tokens excluded) is not supported by hnjax")
    return modes


def read_dense(directory: pathlib.Path) -> DenseLayer:
    """A ``Dense`` module folder: its config and ``linear.weight`` / ``linear.bias`` from ``model.safetensors``."""
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    raw = _read_json(config_path)
    activation_path = raw.get("activation_function", DENSE_ACTIVATIONS["tanh"][0])
    by_path = {path: name for name, (path, _) in DENSE_ACTIVATIONS.items()}
    by_path["torch.nn.Identity"], by_path["torch.nn.Tanh"] = "identity", "tanh"
    if activation_path not in by_path:
        raise ValueError(
            f"{config_path}: field 'activation_function': {activation_path!r} is not supported; hnjax has "
            f"{sorted(by_path)}"
        )
    for field, default in (("module_input_name", "sentence_embedding"), ("use_residual", False)):
        if raw.get(field, default) != default:
            raise ValueError(f"{config_path}: field {field!r}: {raw[field]!r} is not supported (only {default!r})")
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{weights_path} not found; hnjax reads safetensors weights only (a pytorch_model.bin can be converted "
            "by loading the model with sentence-transformers and saving it again)"
        )
    tensors = safetensors_numpy.load_file(str(weights_path))
    if "linear.weight" not in tensors:
        raise ValueError(f"{weights_path}: missing tensor 'linear.weight'")
    weight = np.asarray(tensors["linear.weight"], np.float32)  # [out, in]
    expected = (raw.get("out_features"), raw.get("in_features"))
    if weight.shape != expected:
        raise ValueError(f"{weights_path}: tensor 'linear.weight' has shape {weight.shape}, config says {expected}")
    has_bias = raw.get("bias", True)
    if has_bias and "linear.bias" not in tensors:
        raise ValueError(f"{weights_path}: missing tensor 'linear.bias' (config.json says bias: true)")
    bias = np.asarray(tensors["linear.bias"], np.float32) if has_bias else None
    return DenseLayer(np.ascontiguousarray(weight.T), bias, by_path[activation_path])


def encoder_dir(directory: str | os.PathLike) -> pathlib.Path:
    """The folder holding the encoder: ``directory`` itself, or its ``modules.json`` Transformer module's path."""
    directory = pathlib.Path(directory)
    modules_path = directory / MODULES_FILE
    if not modules_path.is_file():
        return directory
    entries = _read_json(modules_path)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{modules_path}: expected a non-empty JSON list of modules")
    kind, path = _module_kind(entries[0], str(modules_path), 0)
    if kind != "Transformer":
        raise ValueError(f"{modules_path}: entry 0: expected a Transformer module first, got {entries[0]['type']!r}")
    return directory / path


def read_folder(directory: str | os.PathLike) -> FolderInfo:
    """Reads a checkpoint folder's sentence-transformers modules, if any.

    Args:
      directory: a checkpoint folder; without ``modules.json`` it is a plain Hugging Face checkpoint.

    Returns:
      A :class:`FolderInfo`.

    Raises:
      ValueError: a module that changes the vectors and that hnjax cannot reproduce (LSTM, CNN, WordWeights, a
        Router, an unsupported pooling mode or activation, ...), or a malformed file; the message names the file
        and field.
    """
    directory = pathlib.Path(directory)
    modules_path = directory / MODULES_FILE
    if not modules_path.is_file():
        return FolderInfo(directory, None)
    encoder = encoder_dir(directory)
    entries = _read_json(modules_path)
    kinds = [_module_kind(e, str(modules_path), i) for i, e in enumerate(entries)]
    used, ignored = [f"encoder ({kinds[0][1] or 'folder root'})"], []
    st_config = _read_json(encoder / ST_CONFIG_FILE, default={}) if encoder.is_dir() else {}
    max_seq_length = st_config.get("max_seq_length")
    if max_seq_length is not None:
        used.append(f"max_seq_length {max_seq_length} ({ST_CONFIG_FILE})")
    if st_config.get("do_lower_case"):
        raise ValueError(f"{encoder / ST_CONFIG_FILE}: field 'do_lower_case': true is not supported by hnjax")
    pooling, dense, normalize = None, [], False
    for i, ((kind, path), entry) in enumerate(zip(kinds[1:], entries[1:]), start=1):
        where = f"{modules_path}: entry {i} ({entry['type']})"
        if kind == "Pooling":
            if pooling is not None or dense or normalize:
                raise ValueError(f"{where}: a second Pooling, or Pooling after Dense/Normalize, is not supported")
            pooling = read_pooling(directory / path)
            used.append(f"Pooling {'+'.join(pooling)} ({path}/config.json)")
        elif kind == "Dense":
            if pooling is None or normalize:
                raise ValueError(f"{where}: Dense must come after Pooling and before Normalize")
            dense.append(read_dense(directory / path))
            d = dense[-1]
            used.append(f"Dense {d.kernel.shape[0]}→{d.kernel.shape[1]} {d.activation} ({path})")
        elif kind == "Normalize":
            normalize = True
            used.append("Normalize")
        elif kind in INERT_MODULES:
            ignored.append(f"{kind} ({path}): no effect at inference")
        else:
            raise ValueError(f"{where}: module type {entry['type']!r} is not supported by hnjax")
    if pooling is None:
        raise ValueError(
            f"{modules_path}: no Pooling module; token-level models (multi-vector) are read with "
            "hnjax.models.from_pretrained and a pooler of your choice"
        )
    model_config = _read_json(directory / ST_MODEL_CONFIG_FILE, default={})
    similarity = model_config.get("similarity_fn_name")
    if similarity is not None and similarity not in SIMILARITIES:
        ignored.append(f"similarity_fn_name {similarity!r} ({ST_MODEL_CONFIG_FILE}): unknown to hnjax")
        similarity = None
    elif similarity is not None:
        used.append(f"similarity {similarity}")
    if model_config.get("prompts") and any(model_config["prompts"].values()):
        ignored.append(f"prompts {sorted(model_config['prompts'])} ({ST_MODEL_CONFIG_FILE}): prepend them yourself")
    pipeline = SentencePipeline(tuple(pooling), tuple(dense), normalize, max_seq_length, similarity)
    return FolderInfo(encoder, pipeline, tuple(used), tuple(ignored))


# ------------------------------------------------------------------------------------------------------- writing


def _write_json(path: pathlib.Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def write_modules(
    directory: str | os.PathLike, pipeline: SentencePipeline, *, hidden_size: int, versions: dict | None = None
) -> list[dict]:
    """Writes ``modules.json`` and the module folders of ``pipeline`` next to an encoder saved at ``directory``.

    Args:
      directory: the checkpoint folder (the encoder is at its root, module path "").
      pipeline: what turns token states into the sentence vector.
      hidden_size: encoder width D (the Pooling module's input width).
      versions: library versions recorded under ``__version__`` in ``config_sentence_transformers.json``.

    Returns:
      The ``modules.json`` entries.
    """
    directory = pathlib.Path(directory)
    width = len(pipeline.pooling) * hidden_size
    for i, layer in enumerate(pipeline.dense):
        if layer.kernel.shape[0] != width:
            raise ValueError(f"pipeline.dense[{i}]: kernel has {layer.kernel.shape[0]} inputs, expected {width}")
        width = int(layer.kernel.shape[1])
    entries = [{"idx": 0, "name": "0", "path": "", "type": MODULE_TYPES["Transformer"]}]

    def add(kind: str) -> pathlib.Path:
        idx = len(entries)
        entries.append({"idx": idx, "name": str(idx), "path": f"{idx}_{kind}", "type": MODULE_TYPES[kind]})
        return directory / f"{idx}_{kind}"

    pooling_config = {"word_embedding_dimension": hidden_size}
    pooling_config.update({key: mode in pipeline.pooling for key, mode in LEGACY_POOLING_KEYS.items()})
    if len(pipeline.pooling) > 1 and list(pipeline.pooling) != [m for m in LEGACY_POOLING_KEYS.values()
                                                                  if m in pipeline.pooling]:  # fmt: skip
        raise ValueError(f"pipeline.pooling: {pipeline.pooling} is not in sentence-transformers' concatenation order")
    _write_json(add("Pooling") / "config.json", pooling_config)
    for layer in pipeline.dense:
        folder = add("Dense")
        d_in, d_out = layer.kernel.shape
        _write_json(
            folder / "config.json",
            {"in_features": int(d_in), "out_features": int(d_out), "bias": layer.bias is not None,
             "activation_function": DENSE_ACTIVATIONS[layer.activation][0]},
        )  # fmt: skip
        tensors = {"linear.weight": np.ascontiguousarray(np.asarray(layer.kernel, np.float32).T)}
        if layer.bias is not None:
            tensors["linear.bias"] = np.ascontiguousarray(np.asarray(layer.bias, np.float32))
        safetensors_numpy.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if pipeline.normalize:
        add("Normalize").mkdir(parents=True, exist_ok=True)
    _write_json(directory / MODULES_FILE, entries)
    st_config = {"max_seq_length": pipeline.max_seq_length, "do_lower_case": False}
    _write_json(directory / ST_CONFIG_FILE, st_config)
    model_config = {"__version__": dict(versions or {}), "prompts": {}, "default_prompt_name": None}
    if pipeline.similarity is not None:
        model_config["similarity_fn_name"] = pipeline.similarity
    _write_json(directory / ST_MODEL_CONFIG_FILE, model_config)
    return entries
