"""Trained hnjax models in the layouts the PyTorch ecosystem loads: sentence encoders, retrievers, rerankers.

- :func:`export_simcse`: a SimCSE / Focal-InfoNCE encoder as a sentence-transformers folder with exactly the
  embedding that was evaluated: the [CLS] state (the MLP head acts in training only, SimCSE's unsupervised
  ``--mlp_only_train`` setting, kept by Focal-InfoNCE) or the masked mean; cosine similarity.
- :func:`export_retriever`: a retriever's mention and entity encoders as sentence-transformers folders plus
  ``hnjax_retriever.json``, which names the scorer and its parameters (n of MULTI-n, the codes of POLY-m in
  ``codes.safetensors``) so that another framework can rebuild the score; :func:`load_retriever_export` reads it
  back into hnjax. The format is documented in ``docs/models.md``.
- :func:`export_reranker`: a cross-encoder as a one-label sequence classifier (see
  :func:`hnjax.models.save_cross_encoder`).

References:
  Gao et al. (2021), SimCSE, Table 6 and App. A (MLP during training only; [CLS] at test).
  Zhang & Stratos (2021), Understanding Hard Negatives in NCE (DUAL, MULTI-n, SOM, POLY-m retrievers).
  Humeau et al. (2020), Poly-encoders.
"""

from __future__ import annotations

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

from hnjax import reranker, retriever, simcse
from hnjax.models import bert, interop, loading, st_format

logger = logging.getLogger(__name__)

RETRIEVER_CONFIG = "hnjax_retriever.json"
RETRIEVER_FORMAT = "hnjax-retriever"
RETRIEVER_FORMAT_VERSION = 1
CODES_FILE = "codes.safetensors"
CODES_TENSOR = "codes"
# Which token states each scorer uses, per side.
MENTION_VECTORS = {"dual": "cls", "multi": "cls", "som": "all_tokens", "poly": "poly_codes"}
ENTITY_VECTORS = {"dual": "cls", "multi": "first_n", "som": "all_tokens", "poly": "cls"}
SCORES = {
    "dual": "s = <x, y>, x and y the [CLS] states",
    "multi": "s = max_j <x, y_j>, x the mention [CLS] state, y_1..y_n the entity's first n token states (real ones)",
    "som": "s = sum_i max_j <x_i, y_j> over the real token states x_i of the mention and y_j of the entity",
    "poly": "x_k = sum_l softmax_l(<c_k, h_l>) h_l over the mention's real token states h_l (codes c_1..c_m); "
    "s = sum_k softmax_k(<y, x_k>) <y, x_k>, y the entity [CLS] state",
}
INPUT_FORMAT = {
    "mention": "[CLS] left [unused0] mention [unused1] right [SEP] (hnjax.data.zeshel.mention_input_ids)",
    "entity": "[CLS] title [unused2] text [SEP] (hnjax.data.zeshel.entity_input_ids)",
}


def base_pooler(checkpoint: str | os.PathLike, config: bert.EncoderConfig) -> dict | None:
    """The BERT pooler of the checkpoint training started from, when it fits ``config`` (else None).

    SimCSE and the retrievers never use nor train it; it is carried into the exported folders so that
    ``transformers.AutoModel`` loads them without newly initialised weights.
    """
    pooler = loading.load_pooler(checkpoint)
    if pooler is None or pooler["kernel"].shape != (config.hidden_size, config.hidden_size):
        return None
    return pooler


def simcse_pipeline(net: simcse.SimCSE, *, max_seq_length: int) -> st_format.SentencePipeline:
    """The embedding a SimCSE model is evaluated with: [CLS] (no MLP) or the masked mean, compared by cosine."""
    return st_format.SentencePipeline(pooling=(net.pooling,), max_seq_length=max_seq_length, similarity="cosine")


def export_simcse(
    path: str | os.PathLike,
    net: simcse.SimCSE,
    params: dict,
    *,
    tokenizer_from: str | os.PathLike,
    max_seq_length: int,
) -> pathlib.Path:
    """Writes a SimCSE encoder as a sentence-transformers folder (see :func:`simcse_pipeline`).

    Args:
      path: output folder.
      net: the model (its encoder config and pooling).
      params: ``{"encoder", "mlp"?}``; the MLP head is training-only and not written.
      tokenizer_from: checkpoint whose tokenizer the encoder uses.
      max_seq_length: tokens per sentence at evaluation (sentences are truncated to it).

    Returns:
      The folder; ``SentenceTransformer(path).encode(s)`` equals hnjax's evaluation vectors.
    """
    pipeline = simcse_pipeline(net, max_seq_length=max_seq_length)
    encoder_params = jax.device_get(params["encoder"])
    config = net.encoder.config
    return interop.save_sentence_transformer(
        path,
        config,
        encoder_params,
        pipeline,
        tokenizer_from=tokenizer_from,
        pooler=base_pooler(tokenizer_from, config),
    )


def export_retriever(
    path: str | os.PathLike,
    model: retriever.Retriever,
    params: dict,
    *,
    tokenizer_from: str | os.PathLike,
    max_length: int,
) -> pathlib.Path:
    """Writes a retriever: ``mention/`` and ``entity/`` sentence-transformers folders, the codes, the scorer config.

    Each tower's folder pools [CLS] (what DUAL, MULTI's mention side and POLY's entity side use);
    ``encode(..., output_value="token_embeddings")`` gives the token states SOM, MULTI's entity side and POLY's
    codes read. With a shared encoder only ``mention/`` is written and the config names it for both sides.

    Args:
      path: output folder (created).
      model: the retriever (scorer, n, m, shared towers).
      params: its parameters ``{"mention", "entity"?, "codes"?}``.
      tokenizer_from: checkpoint whose tokenizer the encoders use.
      max_length: tokens per mention / entity in training and evaluation.

    Returns:
      The folder.
    """
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    pipeline = st_format.SentencePipeline(pooling=("cls",), max_seq_length=max_length, similarity="dot")
    towers = {"mention": "mention"} if cfg.shared_encoder else {"mention": "mention", "entity": "entity"}
    pooler = base_pooler(tokenizer_from, model.encoder.config)
    for tower, folder in towers.items():
        interop.save_sentence_transformer(
            out / folder, model.encoder.config, jax.device_get(params[tower]), pipeline,
            tokenizer_from=tokenizer_from, pooler=pooler,
        )  # fmt: skip
    config: dict[str, Any] = {
        "format": RETRIEVER_FORMAT,
        "format_version": RETRIEVER_FORMAT_VERSION,
        "scorer": cfg.scorer,
        "score": SCORES[cfg.scorer],
        "mention_encoder": "mention",
        "entity_encoder": "mention" if cfg.shared_encoder else "entity",
        "mention_vectors": MENTION_VECTORS[cfg.scorer],
        "entity_vectors": ENTITY_VECTORS[cfg.scorer],
        "max_length": max_length,
        "normalized": False,
        "input_format": INPUT_FORMAT,
    }
    if cfg.scorer == "multi":
        config["num_entity_vectors"] = cfg.num_entity_vectors
    if cfg.scorer == "poly":
        codes = np.asarray(jax.device_get(params["codes"]), np.float32)
        safetensors_numpy.save_file({CODES_TENSOR: np.ascontiguousarray(codes)}, str(out / CODES_FILE))
        config.update(num_codes=int(codes.shape[0]), codes={"file": CODES_FILE, "tensor": CODES_TENSOR,
                                                            "shape": list(codes.shape)})  # fmt: skip
    elif (out / CODES_FILE).exists():
        (out / CODES_FILE).unlink()
    if cfg.shared_encoder and (out / "entity").is_dir():
        shutil.rmtree(out / "entity")
    (out / RETRIEVER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    logger.info("exported %s retriever to %s", cfg.scorer, out)
    return out


def load_retriever_export(
    path: str | os.PathLike, *, dtype: Any = jnp.float32
) -> tuple[retriever.Retriever, dict, dict[str, Any]]:
    """Reads a folder written by :func:`export_retriever` back into hnjax.

    Returns:
      ``(retriever, params, config)``, ``config`` the parsed ``hnjax_retriever.json``.

    Raises:
      ValueError: not this format, or an unknown version or scorer (the message names the file and field).
    """
    directory = pathlib.Path(path)
    config_path = directory / RETRIEVER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a folder written by hnjax.export.export_retriever")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for field, expected in (("format", RETRIEVER_FORMAT), ("format_version", RETRIEVER_FORMAT_VERSION)):
        if config.get(field) != expected:
            raise ValueError(f"{config_path}: field {field!r}: expected {expected!r}, got {config.get(field)!r}")
    if config.get("scorer") not in retriever.SCORERS:
        raise ValueError(
            f"{config_path}: field 'scorer': expected one of {retriever.SCORERS}, got {config.get('scorer')!r}"
        )
    shared = config["entity_encoder"] == config["mention_encoder"]
    model, mention = loading.from_pretrained(directory / config["mention_encoder"], dtype=dtype)
    params: dict[str, Any] = {"mention": mention}
    if not shared:
        params["entity"] = loading.from_pretrained(directory / config["entity_encoder"], dtype=dtype)[1]
    kwargs = {"scorer": config["scorer"], "shared_encoder": shared}
    if config["scorer"] == "multi":
        kwargs["num_entity_vectors"] = int(config["num_entity_vectors"])
    if config["scorer"] == "poly":
        codes = safetensors_numpy.load_file(str(directory / config["codes"]["file"]))[config["codes"]["tensor"]]
        params["codes"] = jnp.asarray(codes, jnp.float32)
        kwargs["num_codes"] = int(codes.shape[0])
    return retriever.Retriever(model, retriever.RetrieverConfig(**kwargs)), params, config


def export_reranker(
    path: str | os.PathLike,
    model: reranker.CrossEncoder,
    params: dict,
    *,
    tokenizer_from: str | os.PathLike,
    max_length: int,
) -> pathlib.Path:
    """Writes a cross-encoder reranker as a one-label sequence classifier (:func:`hnjax.models.save_cross_encoder`).

    Raises:
      ValueError: a head with no transformers / sentence-transformers equivalent (mean pooling, extra terms).
    """
    extra = sorted(set(params) - {"encoder", "head"})
    if extra:
        raise ValueError(f"params: {extra} are not part of a cross-encoder; only its score exports")
    interop.check_plain(model, ("encoder", "head"), "reranker")
    params = jax.device_get(params)
    return interop.save_cross_encoder(
        path, model.encoder.config, params["encoder"], model.head, params["head"],
        tokenizer_from=tokenizer_from, max_length=max_length,
    )  # fmt: skip
