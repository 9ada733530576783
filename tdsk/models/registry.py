"""The model families: what each one owns, so the engine and the tools never name one.

A family is registered once (:func:`register_family`) with

* ``variant``: the ``model.variant`` that chooses it;
* ``schema``: the dataclass that checks its ``model:`` section
  (:class:`tdsk.schema.CommonModelConfig` plus its own keys; typos and wrong types are
  refused with the key);
* ``build(config, class_names)``: the model (an ``nn.Module`` with ``variant``,
  ``num_segments``, ``num_local``, ``num_classes`` and ``config``);
* ``param_groups(model, solver)`` (optional): the optimiser groups (the engine's default:
  :func:`tdsk.engine.optim.param_groups`, the official TDS-CLIP groups);
* ``loss(outputs, targets, criterion)`` (optional): the training loss (default
  ``criterion(logits_of(outputs), targets)``);
* ``logits_of(outputs)`` (optional): the ``[B, K]`` logits of what ``forward`` returns, for a
  model that returns more than logits (default: the output itself);
* ``official_load(model, state_dict) -> int | None`` / ``official_export(model, epoch) -> dict``
  (optional): the family's official checkpoint format (:func:`tdsk.models.load_checkpoint`
  loads it when ``official_load`` recognises the file, returning the tensors read;
  :func:`tdsk.models.export_official` saves what ``official_export`` returns);
* ``needs_class_names(config)`` (optional): whether ``build`` must have the class names
  (DiST's frozen-text classifier).

Consumers: :func:`family_of`, :func:`logits_of`, :func:`loss_of`, :func:`param_groups_of`.
Adding a family is a module under ``tdsk/models/`` and one :func:`register_family` call in
:mod:`tdsk.models` (docs/families.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from tdsk.schema import register_model_schema

__all__ = ["Family", "register_family", "family", "family_of", "families", "logits_of", "loss_of",
           "param_groups_of", "unwrap"]


@dataclasses.dataclass(frozen=True)
class Family:
    variant: str
    schema: type
    build: Callable[[Dict, Optional[Sequence[str]]], nn.Module]
    description: str = ""
    param_groups: Optional[Callable[[nn.Module, Any], List[dict]]] = None
    loss: Optional[Callable[[Any, torch.Tensor, nn.Module], torch.Tensor]] = None
    logits_of: Optional[Callable[[Any], torch.Tensor]] = None
    official_load: Optional[Callable[[nn.Module, Dict[str, torch.Tensor]], Optional[int]]] = None
    official_export: Optional[Callable[[nn.Module, int], dict]] = None
    needs_class_names: Optional[Callable[[Dict], bool]] = None


_FAMILIES: Dict[str, Family] = {}


def register_family(fam: Family) -> None:
    """Register (or replace) a family and its ``model:`` schema."""
    register_model_schema(fam.variant, fam.schema)
    _FAMILIES[fam.variant] = fam


def families() -> Dict[str, Family]:
    """``{variant: Family}`` of every registered family."""
    return dict(_FAMILIES)


def family(variant: str) -> Family:
    try:
        return _FAMILIES[variant]
    except KeyError:
        raise ValueError(f"model.variant={variant!r}: use one of {', '.join(_FAMILIES)}") from None


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / ``torch.compile`` wrapper."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), nn.Module):
            model = getattr(model, attr)
    return model


def family_of(model: nn.Module) -> Family:
    """The family of a built model (its ``variant`` attribute; wrappers are looked through)."""
    return family(getattr(unwrap(model), "variant", "tds_clip"))


def logits_of(model: nn.Module, outputs: Any) -> torch.Tensor:
    """The ``[B, K]`` logits of ``model``'s ``forward`` output."""
    fn = family_of(model).logits_of
    return fn(outputs) if fn is not None else outputs


def loss_of(model: nn.Module, outputs: Any, targets: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
    """The training loss of ``outputs`` against ``targets`` (class indices ``[B]`` or soft
    targets ``[B, K]``, see :mod:`tdsk.data.mixup`)."""
    fam = family_of(model)
    if fam.loss is not None:
        return fam.loss(outputs, targets, criterion)
    return criterion(logits_of(model, outputs).float(), targets)


def param_groups_of(model: nn.Module, solver: Any) -> Optional[List[dict]]:
    """The family's optimiser groups, or ``None`` for the engine's default groups."""
    fn = family_of(model).param_groups
    return fn(unwrap(model), solver) if fn is not None else None
