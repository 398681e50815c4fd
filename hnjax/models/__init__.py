"""BERT-family encoders (BERT, RoBERTa, MiniLM) in Flax, Hugging Face checkpoint loading, and poolers.

>>> from hnjax import models
>>> model, params = models.from_pretrained("all-MiniLM-L6-v2")  # doctest: +SKIP
>>> hidden = model.apply({"params": params}, input_ids, attention_mask)  # [B, L, D]  # doctest: +SKIP
>>> vectors = models.poolers.mean(hidden, attention_mask)  # [B, D]  # doctest: +SKIP
"""

from hnjax.data.pretrained import resolve_checkpoint
from hnjax.models import bert, flops, interop, loading, packed, poolers, seq_cls, st_format
from hnjax.models.bert import BertModel, EncoderConfig, init_params
from hnjax.models.interop import Pretrained, load_pretrained, save_cross_encoder, save_sentence_transformer
from hnjax.models.loading import (
    from_pretrained,
    init_cross_encoder_head,
    load_pooler,
    save_pretrained,
)

__all__ = [
    "BertModel",
    "EncoderConfig",
    "bert",
    "flops",
    "from_pretrained",
    "init_cross_encoder_head",
    "init_params",
    "interop",
    "load_pooler",
    "load_pretrained",
    "loading",
    "packed",
    "poolers",
    "Pretrained",
    "resolve_checkpoint",
    "save_cross_encoder",
    "save_pretrained",
    "save_sentence_transformer",
    "seq_cls",
    "st_format",
]
