"""The built-in model families (:mod:`tdsk.models.registry`): one entry each.

* ``tds_clip``: TDS-CLIP (frozen CLIP + temporal-difference side network), docs/model.md;
* ``baseline``: frozen CLIP image embeddings averaged over time + a linear head;
* ``dist``: DiST (frozen CLIP + temporal encoder + integration branch), docs/dist.md;
* ``msta``: MSTA (frozen CLIP towers + shared multi-modal adapters + description-guided
  consistency), docs/msta.md;
* ``m2clip``: M2-CLIP (adapters inside frozen CLIP towers, video-text + linear heads), docs/m2clip.md.
"""
from tdsk.models.registry import Family, register_family
from tdsk.schema import DiSTConfig, M2CLIPConfig, ModelConfig, MSTAConfig


def _tds_clip(cfg, class_names=None):
    from tdsk.models.clip_encoder import vision_config  # noqa: PLC0415
    from tdsk.models.tds_clip import TDSCLIP  # noqa: PLC0415
    from tdsk.models.video import parse_td_layers  # noqa: PLC0415

    parse_td_layers(cfg["td_layers"], int(vision_config(cfg["arch"])["vision_cfg"]["layers"]))  # validate early
    return TDSCLIP(cfg)


def _baseline(cfg, class_names=None):
    from tdsk.models.baseline import MeanPoolCLIP  # noqa: PLC0415

    return MeanPoolCLIP(cfg)


def _tds_official_export(model, epoch):
    from tdsk.models.official import official_state_dict  # noqa: PLC0415

    return {"epoch": int(epoch), "model_state_dict": official_state_dict(model)}


def _dist(cfg, class_names=None):
    from tdsk.models.dist import DiST  # noqa: PLC0415

    return DiST(cfg, class_names)


def _dist_groups(model, solver):
    from tdsk.models.dist import dist_param_groups  # noqa: PLC0415

    return dist_param_groups(model, solver)


def _dist_official_load(model, sd):
    from tdsk.models import dist_official  # noqa: PLC0415

    return dist_official.load_official(model, sd) if dist_official.is_official(sd) else None


def _dist_official_export(model, epoch):
    from tdsk.models.dist_official import official_state_dict  # noqa: PLC0415

    return {"epoch": int(epoch), "model_state": official_state_dict(model)}


def _msta(cfg, class_names=None):
    from tdsk.models.msta import MSTA  # noqa: PLC0415

    return MSTA(cfg, class_names)


def _lazy(module, name):
    """``tdsk.models.<module>.<name>``, imported at the first call (importing tdsk.models stays light)."""
    def hook(*args):
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f"tdsk.models.{module}"), name)(*args)

    return hook


def _m2clip(cfg, class_names=None):
    from tdsk.models.m2clip import M2CLIP  # noqa: PLC0415

    return M2CLIP(cfg, class_names)


def _m2clip_official_load(model, sd):
    from tdsk.models import m2clip_official  # noqa: PLC0415

    return m2clip_official.load_official(model, sd) if m2clip_official.is_official(sd) else None


def _m2clip_official_export(model, epoch):
    from tdsk.models.m2clip_official import official_state_dict  # noqa: PLC0415

    return {"model": official_state_dict(model), "next_epoch": int(epoch) + 1}


def _register() -> None:
    register_family(Family("tds_clip", ModelConfig, _tds_clip, "TDS-CLIP: frozen CLIP + temporal-difference side "
                           "network (Wang & Wang 2024)", official_export=_tds_official_export))
    register_family(Family("baseline", ModelConfig, _baseline, "frozen CLIP mean-pool + linear head"))
    register_family(Family("dist", DiSTConfig, _dist, "DiST: frozen CLIP + temporal encoder + integration branch "
                           "(Qing et al., ICCV 2023)", param_groups=_dist_groups,
                           official_load=_dist_official_load, official_export=_dist_official_export,
                           needs_class_names=lambda cfg: cfg.get("classifier") == "text"))
    register_family(Family("msta", MSTAConfig, _msta, "MSTA: frozen CLIP towers + shared multi-modal adapters + "
                           "description-guided consistency (Chen et al., CVPR 2025)",
                           param_groups=_lazy("msta", "msta_param_groups"), loss=_lazy("msta", "msta_loss"),
                           logits_of=_lazy("msta", "msta_logits"), needs_class_names=lambda cfg: True))
    register_family(Family("m2clip", M2CLIPConfig, _m2clip, "M2-CLIP: adapters inside frozen CLIP towers, video-text "
                           "+ linear heads (Wang et al., AAAI 2024)",
                           param_groups=_lazy("m2clip", "m2clip_param_groups"), loss=_lazy("m2clip", "m2clip_loss"),
                           logits_of=_lazy("m2clip", "m2clip_logits"), official_load=_m2clip_official_load,
                           official_export=_m2clip_official_export, needs_class_names=lambda cfg: True))


_register()
