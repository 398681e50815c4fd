"""The PyTorch side of the benchmark cases: the reference logic as its users run it, and with hnjax's tricks.

Imported only by benchmark worker processes that run a PyTorch implementation (it needs ``torch`` and
``transformers``; nothing else in hnjax imports torch).

- ``pytorch`` (layout ``padded``): eager ``transformers.BertModel``, retriever inputs padded to ``max_len`` on both
  sides and all B·K candidates encoded (hard-nce-el); SimCSE's ``cl_forward`` (one pass over the 2B duplicated
  sentences, padded to the batch's longest).
- ``pytorch_same_tricks`` (layout ``packed`` or ``dedup``): the same PyTorch code given hnjax's inputs: packed rows
  (a 4-D block-diagonal additive mask and restarting ``position_ids``, which ``BertModel`` accepts) and each distinct
  candidate entity once.

One deliberate difference from hard-nce-el: its ``HardAttention`` lets padding states into the sum and the max; here
padding is masked on both sides, so that both compute the same loss on the same inputs.
"""

from __future__ import annotations

import numpy as np

from hnjax.bench import harness, steps


def som_scores(torch, q, q_mask, d, d_mask):
    """Σ_i max_j ⟨q_i, d_j⟩ over real tokens: q [B, Lm, D], d [B, K, Le, D] → [B, K] (hard-nce-el HardAttention)."""
    sim = torch.einsum("bid,bkjd->bkij", q, d)  # [B, K, Lm, Le]
    sim = sim.masked_fill(~d_mask[:, :, None, :], float("-inf"))
    best = sim.max(dim=-1).values  # [B, K, Lm]
    return (best * q_mask[:, None, :]).sum(-1)


def sp_logits(torch, z1, z2):
    """Focal-InfoNCE logits (focalNCE/models.py sp_logits): s_ii²/τ on the diagonal, s_ij(s_ij + m)/τ off it."""
    cos = torch.nn.functional.cosine_similarity(z1[:, None, :], z2[None, :, :], dim=-1)  # [N, N]
    eye = torch.eye(cos.shape[0], dtype=cos.dtype, device=cos.device)
    return (cos * eye * cos + (cos + steps.MARGIN) * (1 - eye) * cos) / steps.TEMPERATURE


def optimizer(torch, module):
    """AdamW with hard-nce-el's grouping (no decay for biases and LayerNorm weights)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": steps.WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=steps.LR)


def device(torch, name: str):
    """(device, its kind, a reader of its peak memory in MB or None): CUDA when asked for or, with "auto", present.

    On CUDA, float32 matmuls run on TF32 tensor cores, as XLA does by default there, so that fp32 rows compare alike.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch device cuda: PyTorch sees no CUDA device")
    dev = torch.device(name)
    if dev.type != "cuda":
        return dev, "cpu", None
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return dev, torch.cuda.get_device_name(dev), lambda: torch.cuda.max_memory_allocated(dev) / 2**20


def _packed_hidden(torch, encoder, batch: dict, prefix: str, row_length: int):
    """Encodes a packed stream's grid with a block-diagonal 4-D mask; returns the flat token states [T, D]."""

    def grid(name):
        flat = batch[prefix + name].reshape(-1)
        rows = flat.numel() // row_length
        return flat[: rows * row_length].reshape(rows, row_length)

    segments = grid("segments")
    allowed = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)  # [R, Lr, Lr]
    dtype = next(encoder.parameters()).dtype
    additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    additive = additive.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]  # [R, 1, Lr, Lr]
    out = encoder(
        input_ids=grid("tokens"), attention_mask=additive, token_type_ids=grid("types"), position_ids=grid("positions")
    ).last_hidden_state
    return out.reshape(-1, out.shape[-1])


def _gather(torch, flat, slots, mask):
    return flat[slots] * mask[..., None].to(flat.dtype)


def train_step(
    *,
    case: str,
    checkpoint: str,
    layout: str,
    dtype: str,
    batches: list[dict],
    pad_length: int,
    max_length: int,
    row_length: int,
    head: tuple[np.ndarray, np.ndarray] | None = None,
    threads: int | None = None,
    torch_device: str = "auto",
) -> harness.Prepared:
    """One training step of a case in eager PyTorch on batches in a layout (arguments as
    :func:`hnjax.bench.steps.train_step`; ``threads``: torch compute threads, ``torch_device``: auto/cpu/cuda)."""
    import copy  # noqa: PLC0415

    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from hnjax import models  # noqa: PLC0415

    if threads is not None:
        torch.set_num_threads(threads)
    dev, device_kind, peak = device(torch, torch_device)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    path = str(models.resolve_checkpoint(checkpoint))
    mention = transformers.BertModel.from_pretrained(path, add_pooling_layer=False)
    arrays = steps.layout_arrays(case, batches, layout, pad_length=pad_length, max_length=max_length,
                                 row_length=row_length)  # fmt: skip

    def tensor(x):
        x = np.asarray(x)
        return torch.from_numpy(x.astype(np.int64) if x.dtype.kind in "iu" else x).to(dev)

    batches_t = [{k: tensor(v) for k, v in a.items()} for a in arrays]
    packed_layout = layout.startswith("packed")
    if case == "retriever_som_step":
        module = torch.nn.ModuleDict({"mention": mention, "entity": copy.deepcopy(mention)})

        def loss_of(b):
            if packed_layout:
                q_flat = _packed_hidden(torch, module["mention"], b, "mention_", row_length)
                q, qm = _gather(torch, q_flat, b["mention_slots"], b["mention_mask"]), b["mention_mask"]
                e_flat = _packed_hidden(torch, module["entity"], b, "entity_", row_length)
                d, dm = _gather(torch, e_flat, b["entity_slots"], b["entity_mask"]), b["entity_mask"]
            else:
                q = module["mention"](input_ids=b["mention_ids"], attention_mask=b["mention_mask"]).last_hidden_state
                qm = b["mention_mask"]
                if "cand_index" in b:
                    h = module["entity"](input_ids=b["entity_ids"], attention_mask=b["entity_mask"]).last_hidden_state
                    d, dm = h[b["cand_index"]], b["entity_mask"][b["cand_index"]]  # [B, K, Le, D], [B, K, Le]
                else:
                    bb, k, le = b["cand_ids"].shape
                    ids, mask = b["cand_ids"].reshape(bb * k, le), b["cand_token_mask"].reshape(bb * k, le)
                    d = module["entity"](input_ids=ids, attention_mask=mask).last_hidden_state.reshape(bb, k, le, -1)
                    dm = b["cand_token_mask"]
            scores = som_scores(torch, q.float(), qm.bool(), d.float(), dm.bool())
            gold = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
            return torch.nn.functional.cross_entropy(scores, gold)

    elif case == "simcse_focal_step":
        width = mention.config.hidden_size
        mlp = torch.nn.Linear(width, width)
        kernel, bias = head
        with torch.no_grad():
            mlp.weight.copy_(torch.from_numpy(kernel.T.copy()))
            mlp.bias.copy_(torch.from_numpy(bias))
        module = torch.nn.ModuleDict({"encoder": mention, "mlp": mlp})

        def loss_of(b):
            if packed_layout:  # both views in the packed grid: one pass, [CLS] of each copy
                flat = _packed_hidden(torch, module["encoder"], b, "", row_length)
                h = flat[b["slots"][..., 0]]  # [B, 2, D]
            else:  # cl_forward: (bs, 2, L) flattened to (2·bs, L), one encoder pass, [CLS] → MLP, views split
                ids = b["input_ids"].repeat_interleave(2, dim=0)
                mask = b["attention_mask"].repeat_interleave(2, dim=0)
                h = module["encoder"](input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
            z = torch.tanh(module["mlp"](h)).float().view(-1, 2, h.shape[-1])
            logits = sp_logits(torch, z[:, 0], z[:, 1])
            return torch.nn.functional.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))

    else:
        raise ValueError(f"case: expected one of {steps.STEP_CASES}, got {case!r}")
    module.to(dev)
    module.eval()
    with torch.no_grad():
        loss_check = float(loss_of(batches_t[0]))
    module.train()
    opt = optimizer(torch, module)
    counter = {"i": 0}

    def run(n: int) -> None:
        for _ in range(n):
            b = batches_t[counter["i"] % len(batches_t)]
            counter["i"] += 1
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_of(b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), steps.CLIP)
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    info = steps.step_info(case, models.EncoderConfig.from_json(path), arrays, row_length)
    return harness.Prepared(run, loss_check, None, info, device_kind, peak)


def micro(*, case: str, dtype: str, vectors: dict, threads: int | None = None, torch_device: str = "auto"):
    """``loss_only`` / ``scorer_only`` in eager PyTorch (see :func:`hnjax.bench.steps.micro`)."""
    import torch  # noqa: PLC0415

    if threads is not None:
        torch.set_num_threads(threads)
    dev, device_kind, peak = device(torch, torch_device)
    v = {k: torch.from_numpy(x).to(dev) for k, x in vectors.items()}
    cast = (lambda x: x.bfloat16().float()) if dtype == "bf16" else (lambda x: x)
    if case == "loss_only":
        names = ("scores", "z1", "z2")

        def f(s, z1, z2):
            gold = torch.zeros(s.shape[0], dtype=torch.long, device=dev)
            nce = torch.nn.functional.cross_entropy(cast(s), gold)
            logits = sp_logits(torch, cast(z1), cast(z2))
            return nce + torch.nn.functional.cross_entropy(logits, torch.arange(logits.shape[0], device=dev))

    elif case == "scorer_only":
        names = ("q", "d")

        def f(q, d):
            return som_scores(torch, cast(q), v["q_mask"], cast(d), v["d_mask"]).sum()

    else:
        raise ValueError(f"case: expected one of {steps.MICRO_CASES}, got {case!r}")
    args = [v[k].clone().requires_grad_(True) for k in names]
    with torch.no_grad():
        loss_check = float(f(*args))

    def run(n: int) -> None:
        for _ in range(n):
            for x in args:
                x.grad = None
            f(*args).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return harness.Prepared(run, loss_check, None, {}, device_kind, peak)


def encoder_pass(
    *, checkpoint: str, dtype: str, batch_size: int, length: int, seed: int = 0, backward: bool = False,
    threads: int | None = None, torch_device: str = "auto",
) -> harness.Prepared:  # fmt: skip
    """``transformers.AutoModel`` on the batch of :func:`hnjax.bench.steps.encoder_batch`, eager: forward under
    ``inference_mode`` (bf16: the model cast to bfloat16), or forward and backward of Σ hidden states (bf16:
    autocast)."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from hnjax import models  # noqa: PLC0415
    from hnjax.models import flops  # noqa: PLC0415

    if threads is not None:
        torch.set_num_threads(threads)
    dev, device_kind, peak = device(torch, torch_device)
    path = str(models.resolve_checkpoint(checkpoint))
    config = models.EncoderConfig.from_json(path)
    model = transformers.AutoModel.from_pretrained(path).to(dev)
    ids, mask = (torch.from_numpy(x.astype(np.int64)).to(dev) for x in steps.encoder_batch(config, batch_size,
                                                                                             length, seed))  # fmt: skip
    if backward:
        model.train()
        for m in model.modules():  # no dropout: the same work as the jitted gradient
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with autocast:
                out = model(input_ids=ids, attention_mask=mask).last_hidden_state
            out.float().sum().backward()

    else:
        model.eval()
        if dtype == "bf16":
            model = model.to(torch.bfloat16)

        def step() -> None:
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)

    def run(n: int) -> None:
        for _ in range(n):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.inference_mode():
        sample = model(input_ids=ids, attention_mask=mask).last_hidden_state[0, :2, :4].float().cpu().numpy()
    info = {"model_flops_per_step": flops.encoder_flops(config, batch_size, length, training=backward),
            "output_sample": sample.tolist()}  # fmt: skip
    return harness.Prepared(run, None, None, info, device_kind, peak)
