"""BERT-family Transformer encoder (BERT, RoBERTa, MiniLM) in Flax linen.

The module holds parameters only; it returns the last hidden states [B, L, D] and leaves pooling to
:mod:`hnjax.models.poolers`.

Packed input: with ``segment_ids`` [R, L] (0 for padding, equal ids for the tokens of one sequence) and
``position_ids`` [R, L] (each sequence's positions counted from 0), several sequences share a row of L tokens. A
token then attends only to the tokens of its own sequence (a block-diagonal mask), so every real token's hidden state
equals the one of the same sequence encoded alone; :mod:`hnjax.models.packed` builds such rows and reads the
sequences back out. Parameter names are chosen so that :mod:`hnjax.models.loading` can map them one to one
onto Hugging Face ``BertModel`` / ``RobertaModel`` tensors.

Mixed precision: ``dtype`` is the compute dtype of the matrix multiplications. Parameters stay float32; attention
logits, the softmax, LayerNorm and the residual stream are float32; the output is float32.

References:
    Devlin et al. (2019), BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding.
    Liu et al. (2019), RoBERTa: A Robustly Optimized BERT Pretraining Approach.
    Wang et al. (2020), MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
    Transformers.
    Hugging Face transformers, ``models/bert/modeling_bert.py`` and ``models/roberta/modeling_roberta.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

MODEL_TYPES = ("bert", "roberta")

# Hugging Face ``hidden_act`` names → JAX functions. "gelu" is the exact erf form (transformers' GELUActivation).
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

_INIT_STD = 0.02  # BERT's initializer_range.


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyperparameters of a BERT-family encoder, as in a Hugging Face ``config.json``.

    Attributes:
        model_type: "bert" (BERT, MiniLM) or "roberta" (positions offset past ``pad_token_id``).
        vocab_size: number of token embeddings V.
        hidden_size: model width D.
        num_hidden_layers: number of Transformer layers.
        num_attention_heads: heads H; D must be divisible by H.
        intermediate_size: width of the feed-forward layer.
        hidden_act: feed-forward activation, a key of ``ACTIVATIONS``.
        layer_norm_eps: LayerNorm epsilon.
        max_position_embeddings: number of position embeddings.
        type_vocab_size: number of token-type (segment) embeddings (2 for BERT, 1 for RoBERTa).
        pad_token_id: id of the padding token (RoBERTa position ids are counted from it).
        hidden_dropout_prob: dropout on embeddings and sub-layer outputs.
        attention_probs_dropout_prob: dropout on attention probabilities.
    """

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type: expected one of {MODEL_TYPES}, got {self.model_type!r}")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size: expected a multiple of num_attention_heads={self.num_attention_heads}, "
                f"got {self.hidden_size}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act: expected one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps: expected > 0, got {self.layer_norm_eps!r}")
        if not isinstance(self.pad_token_id, int) or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id: expected an integer in [0, {self.vocab_size}), got {self.pad_token_id!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
        if self.model_type == "roberta" and self.max_position_embeddings <= self.pad_token_id + 1:
            raise ValueError(
                f"max_position_embeddings: RoBERTa positions start at pad_token_id + 1 = {self.pad_token_id + 1}, "
                f"so expected more than that, got {self.max_position_embeddings}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head, D / H."""
        return self.hidden_size // self.num_attention_heads

    @property
    def max_length(self) -> int:
        """Longest sequence the position embeddings cover (RoBERTa loses pad_token_id + 1 positions)."""
        if self.model_type == "roberta":
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> EncoderConfig:
        """Builds a config from a Hugging Face config dictionary, ignoring keys this encoder does not use.

        Args:
            raw: the parsed ``config.json``.
            source: name used in error messages (the file path).

        Returns:
            The validated config.

        Raises:
            ValueError: unknown ``model_type``, unsupported ``position_embedding_type``, missing or invalid fields.
        """
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"{source}: field 'model_type': expected one of {MODEL_TYPES}, got {model_type!r}")
        position_type = raw.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"{source}: field 'position_embedding_type': expected 'absolute', got {position_type!r}")
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name in raw:
                kwargs[field.name] = raw[field.name]
            elif field.name not in ("hidden_dropout_prob", "attention_probs_dropout_prob", "pad_token_id"):
                raise ValueError(f"{source}: missing field {field.name!r}")
        if raw.get("pad_token_id") is None:
            kwargs["pad_token_id"] = 1 if model_type == "roberta" else 0
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> EncoderConfig:
        """Reads ``config.json`` (a path to the file, or to the directory holding it).

        Args:
            path: file or checkpoint directory.

        Returns:
            The validated config.

        Raises:
            FileNotFoundError: no such file.
            ValueError: invalid JSON or fields (the message names the file and field).
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.json not found: {path}")
        with open(path, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        return cls.from_dict(raw, source=path)

    def to_dict(self) -> dict[str, Any]:
        """Hugging Face ``config.json`` contents (loadable by ``transformers.AutoConfig``)."""
        out = dataclasses.asdict(self)
        out["architectures"] = ["RobertaModel" if self.model_type == "roberta" else "BertModel"]
        out["position_embedding_type"] = "absolute"
        out["initializer_range"] = _INIT_STD
        return out


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(_INIT_STD),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    # float32 statistics and output keep the residual stream in float32 under bf16 compute.
    return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def position_ids(input_ids: jax.Array, *, model_type: str, pad_token_id: int) -> jax.Array:
    """Position ids of each token.

    BERT: p_l = l. RoBERTa (transformers' ``create_position_ids_from_input_ids``): non-padding tokens are numbered
    from pad_token_id + 1, padding tokens get pad_token_id, p_l = (Σ_{l' ≤ l} m_l') · m_l + pad with m = (ids ≠ pad).

    Args:
        input_ids: [B, L] token ids.
        model_type: "bert" or "roberta".
        pad_token_id: padding id (RoBERTa only).

    Returns:
        [B, L] int32 position ids.
    """
    batch, length = input_ids.shape
    if model_type == "roberta":
        not_pad = (input_ids != pad_token_id).astype(jnp.int32)  # [B, L]
        return jnp.cumsum(not_pad, axis=1) * not_pad + pad_token_id
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def position_offset(*, model_type: str, pad_token_id: int) -> int:
    """Position id of a sequence's first token: 0 for BERT, ``pad_token_id + 1`` for RoBERTa."""
    return pad_token_id + 1 if model_type == "roberta" else 0


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout. Output [B, L, D] float32.

    ``positions`` [B, L] counts each token's place in its own sequence from 0 (packed rows); None numbers the row
    (:func:`position_ids`).
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool, positions=None):
        cfg = self.config
        init = nn.initializers.normal(_INIT_STD)

        def embed(num, name):
            return nn.Embed(num, cfg.hidden_size, embedding_init=init, param_dtype=jnp.float32, name=name)

        if positions is None:
            positions = position_ids(input_ids, model_type=cfg.model_type, pad_token_id=cfg.pad_token_id)
        else:
            positions = positions + position_offset(model_type=cfg.model_type, pad_token_id=cfg.pad_token_id)
        x = embed(cfg.vocab_size, "word_embeddings")(input_ids)  # [B, L, D]
        x = x + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
        x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        x = _layer_norm(cfg.layer_norm_eps, "layer_norm")(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with output projection (no residual, no norm)."""

    config: EncoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask, deterministic: bool):
        """``attention_mask``: [B, L] keys that every query may attend to, or [B, L, L] per query (packed rows)."""
        cfg = self.config
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim
        batch, length, _ = x.shape

        def project(name):
            return _dense(cfg.hidden_size, self.dtype, name)(x).reshape(batch, length, heads, head_dim)

        q, k, v = project("query"), project("key"), project("value")  # [B, L, H, Dh]
        # Logits and softmax in float32 whatever the compute dtype.
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)  # [B, H, L, L]
        logits = logits / jnp.sqrt(jnp.float32(head_dim))
        # The same additive mask as transformers (finfo.min), so fully masked rows behave the same.
        allowed = attention_mask[:, None, None, :] if attention_mask.ndim == 2 else attention_mask[:, None]
        logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v, preferred_element_type=jnp.float32)
        context = context.astype(self.dtype).reshape(batch, length, cfg.hidden_size)  # [B, L, D]
        return _dense(cfg.hidden_size, self.dtype, "output")(context)


class BertLayer(nn.Module):
    """Post-norm Transformer layer: x ← LN(x + Attn(x)); x ← LN(x + W₂ act(W₁ x))."""

    config: EncoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask, deterministic: bool):
        cfg = self.config
        dropout = nn.Dropout(cfg.hidden_dropout_prob)
        attn = BertSelfAttention(cfg, dtype=self.dtype, name="attention")(x, attention_mask, deterministic)
        x = _layer_norm(cfg.layer_norm_eps, "attention_norm")(x + dropout(attn, deterministic=deterministic))
        h = _dense(cfg.intermediate_size, self.dtype, "intermediate")(x)  # [B, L, F]
        h = ACTIVATIONS[cfg.hidden_act](h)
        h = _dense(cfg.hidden_size, self.dtype, "output")(h)
        return _layer_norm(cfg.layer_norm_eps, "output_norm")(x + dropout(h, deterministic=deterministic))


class BertModel(nn.Module):
    """BERT-family encoder returning last hidden states.

    ``model.apply({"params": params}, input_ids, attention_mask, token_type_ids=None, deterministic=True,
    rngs={"dropout": key})`` → [B, L, D] float32.

    Attributes:
        config: the encoder hyperparameters.
        dtype: compute dtype of matrix multiplications (float32 or bfloat16); parameters stay float32.
        remat: recompute each layer's activations in the backward pass (``nn.remat``) to save memory.

    Example:
        >>> cfg = EncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        >>> model = BertModel(cfg)
        >>> params = init_params(cfg, jax.random.key(0))
        >>> ids = jnp.array([[101, 7, 102, 0]])
        >>> model.apply({"params": params}, ids, ids != 0).shape
        (1, 4, 32)
    """

    config: EncoderConfig
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        deterministic: bool = True,
        *,
        segment_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Encodes a batch of sequences, or of packed rows.

        Args:
            input_ids: [B, L] integer token ids.
            attention_mask: [B, L] bool or 0/1 integers, true for real tokens.
            token_type_ids: [B, L] segment ids, or None for all zeros.
            deterministic: disable dropout; when False, an rng named "dropout" must be given to ``apply``.
            segment_ids: packed rows: [B, L] integers, equal for the tokens of one sequence, 0 for padding; a token
                attends to the tokens of its own sequence only. Needs ``position_ids``.
            position_ids: packed rows: [B, L] position of each token within its own sequence, from 0 (RoBERTa's
                offset past the padding id is added here).

        Returns:
            [B, L, D] float32 last hidden states.
        """
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids: expected shape [B, L], got {input_ids.shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids: expected an integer dtype, got {input_ids.dtype}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask: expected shape {input_ids.shape}, got {attention_mask.shape}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        elif token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids: expected shape {input_ids.shape}, got {token_type_ids.shape}")
        mask = attention_mask.astype(bool)
        if (segment_ids is None) != (position_ids is None):
            raise ValueError("segment_ids and position_ids: expected both (packed rows) or neither")
        if segment_ids is None:
            if input_ids.shape[1] > cfg.max_length:
                raise ValueError(
                    f"input_ids: sequence length {input_ids.shape[1]} exceeds the {cfg.max_length} positions of "
                    f"this {cfg.model_type} encoder"
                )
            attend = mask  # [B, L]: every query sees the real keys of its row
        else:
            for name, value in (("segment_ids", segment_ids), ("position_ids", position_ids)):
                if value.shape != input_ids.shape:
                    raise ValueError(f"{name}: expected shape {input_ids.shape}, got {value.shape}")
            same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, L, L]
            attend = same & mask[:, None, :]  # block-diagonal: a query sees the real keys of its own sequence
        x = BertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, deterministic, position_ids)
        layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if self.remat else BertLayer
        for i in range(cfg.num_hidden_layers):
            x = layer_cls(cfg, dtype=self.dtype, name=f"layer_{i}")(x, attend, deterministic)
        return x.astype(jnp.float32)


def init_params(config: EncoderConfig, key: jax.Array) -> dict:
    """Randomly initialised encoder parameters (BERT's N(0, 0.02) weights, zero biases, unit LayerNorm).

    Args:
        config: encoder hyperparameters.
        key: PRNG key.

    Returns:
        Nested dict of float32 arrays, the ``params`` collection of :class:`BertModel`.
    """
    return flax.core.unfreeze(_init(config, key))


@functools.partial(jax.jit, static_argnums=0)
def _init(config: EncoderConfig, key: jax.Array) -> dict:
    # One compiled program instead of one dispatch (and compile) per initialiser.
    ids = jnp.zeros((1, 2), jnp.int32)
    return BertModel(config).init({"params": key}, ids, jnp.ones((1, 2), bool))["params"]
