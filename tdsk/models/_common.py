"""Small shared pieces of the model layer: recompute segments and BatchNorm under them.

Memory design (docs/model.md §12): the side network keeps, between forward
and backward, only compact tensors. Cheap parts of a side layer run inside
*recompute segments* (non-reentrant :func:`torch.utils.checkpoint.checkpoint`), which
save only their inputs and re-run the forward during backward. A segment's BatchNorm
must not update its running statistics a second time while being recomputed;
:func:`batch_norm` takes care of that.
"""
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["batch_norm", "recompute", "in_backward", "autocast_dtype", "QuickGELU"]


def autocast_dtype(device: torch.device):
    """The autocast dtype active for ``device``'s type, or ``None`` (also for meta tensors)."""
    dev = torch.device(device).type
    try:
        return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    except RuntimeError:  # a device type without autocast (meta)
        return None


def in_backward() -> bool:
    """True while autograd runs a backward pass (i.e. a checkpoint segment is being recomputed)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


def batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` for channel-first ``x`` (dim 1 = channels, any rank >= 2).

    Identical to calling the module, except that when the forward is being re-run by a
    recompute segment during backward, the running statistics are not updated again
    (the batch statistics are, of course, still used).

    A :class:`~torch.nn.SyncBatchNorm` (``train.sync_bn=true``) runs through its own
    forward so that batch statistics are reduced across ranks; the trainer refuses
    ``sync_bn`` together with recompute segments, whose backward re-run would sync and
    update the running statistics a second time.
    """
    if isinstance(bn, nn.SyncBatchNorm):
        if bn.training and in_backward():
            raise RuntimeError(
                "SyncBatchNorm inside a recompute segment: set model.recompute_cheap=false and "
                "model.side_checkpoint=false when train.sync_bn=true"
            )
        return bn(x)
    use_batch_stats = bn.training or not bn.track_running_stats
    running_mean, running_var = bn.running_mean, bn.running_var
    if bn.training and bn.track_running_stats:
        if in_backward():
            # Recomputation: same op, same saved tensors, but the update goes to
            # throw-away copies (the real update happened in the forward).
            running_mean, running_var = running_mean.clone(), running_var.clone()
        elif bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
    momentum = bn.momentum
    if momentum is None:  # cumulative moving average, as nn.BatchNorm does
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.num_batches_tracked else 0.0
    return F.batch_norm(
        x, running_mean, running_var, bn.weight, bn.bias, use_batch_stats, momentum, bn.eps
    )


def batch_norm_channels_last(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the last dim of ``x`` (token layout ``[..., D]``).

    A BatchNorm3d over ``(B, D, T, g, g)`` normalises each channel with statistics over
    ``B, T, g, g``; on the token layout ``(B, T, N, D)`` that is a BatchNorm over the
    rows of the ``(B*T*N, D)`` matrix: same statistics, same running-statistics update.
    """
    shape = x.shape
    return batch_norm(bn, x.reshape(-1, shape[-1])).view(shape)


def recompute(fn: Callable, *args, enabled: bool = True):
    """Run ``fn(*args)`` as a recompute segment when autograd is recording, else plainly.

    The segment saves only ``args`` for backward and re-runs ``fn`` in backward
    (non-reentrant checkpoint: works with ``torch.compile`` and with inputs that do
    not require grad, such as the frozen ViT taps).
    """
    if not enabled or not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)


class QuickGELU(nn.Module):
    """CLIP's activation ``x * sigmoid(1.702 x)`` (Radford et al., 2021), used by DiST's blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def fit_problems(bad, missing, unexpected) -> list:
    """The reasons a checkpoint does not fit a model, one phrase each (shared by the official
    loaders): ``bad`` ``[(key, file_shape, model_shape)]``, ``missing`` and ``unexpected`` keys."""
    def some(keys):
        return f"{keys[:8]}" + (" ..." if len(keys) > 8 else "")

    problems = []
    if bad:
        problems.append(f"{len(bad)} shape mismatches (file vs model): "
                        + "; ".join(f"{k}: {g} vs {w}" for k, g, w in bad[:8]))
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file: {some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors in the file: {some(unexpected)}")
    return problems
