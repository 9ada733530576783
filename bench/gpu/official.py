"""The official TDS-CLIP implementation, loaded from a local copy by file path (nothing of it is
copied into tdsk): the classifier built as ``clip.load`` builds it, the SME stem in the official
layout, and the logit parity check."""
from __future__ import annotations

import contextlib
import io
import os
from typing import Dict, Optional

from runlib import error_text, lazy_torch, note


# ---------------------------------------------------------------------------
# the official implementation (loaded from a local copy, by file path)
# ---------------------------------------------------------------------------

def load_official(path: Optional[str]):
    """The official ``clip/model.py`` module, or ``None`` when no path was given."""
    if not path:
        return None
    import importlib.util

    model_py = path if path.endswith(".py") else os.path.join(path, "clip", "model.py")
    if not os.path.isfile(model_py):
        raise FileNotFoundError(f"{model_py} not found: --official takes the root of a local copy of "
                                "BBYL9413/TDS-CLIP (with clip/model.py)")
    spec = importlib.util.spec_from_file_location("tds_clip_official_model", model_py)
    mod = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()):
        spec.loader.exec_module(mod)
    return mod


def official_classifier(mod, tdsk_model):
    """The official model for ``tdsk_model``'s config: the official ``VisualTransformer``
    (frozen CLIP tower + side network, as ``clip.load`` builds it) and ``fc``, with the
    official freezing rule (everything of the visual tower frozen but the ``side`` parts)."""
    import torch.nn as nn

    c, enc = tdsk_model.config, tdsk_model.encoder

    class OfficialClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its dropout list
                self.visual = mod.VisualTransformer(
                    input_resolution=enc.image_size, patch_size=enc.patch_size, width=enc.width, layers=enc.layers,
                    heads=max(1, enc.width // 64), output_dim=int(c["side_dim"]), T=int(c["num_segments"]),
                    side_dim=int(c["side_dim"]), num_diff=int(c["num_local"]))
            self.fc = nn.Linear(int(c["side_dim"]), int(c["num_classes"]))
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("fc.") or "side" in name)

        def forward(self, x):  # the official (B*T, M*3, H, W) layout
            return self.fc(self.visual(x))

    return OfficialClassifier()


def parity(official, tdsk_model, video, dev) -> Dict:
    """Load tdsk's official-format state dict into the official model; fp32 eval logits compared."""
    torch = lazy_torch()
    from tdsk.models import official_state_dict

    info = {}
    try:
        missing, unexpected = official.load_state_dict(official_state_dict(tdsk_model), strict=False)
        info.update(missing_keys=len(missing), unexpected_keys=len(unexpected),
                    missing_examples=list(missing)[:3], unexpected_examples=list(unexpected)[:3])
        if missing or unexpected:
            return info
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            official.eval(), tdsk_model.eval()
            with torch.no_grad():
                a = tdsk_model(video)
                b = official(video.reshape(-1, video.shape[2] * video.shape[3], *video.shape[-2:]))
            info.update(max_abs_diff=float((a.float() - b.float()).abs().max()), max_abs_logit=float(a.abs().max()))
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
            official.train(), tdsk_model.train()
    except Exception as exc:
        info["error"] = error_text(exc)
    return info


def official_or_note(args, step):
    if not args.official:
        note(args.out, step, "official rows skipped: no path to a local copy of BBYL9413/TDS-CLIP given "
                             "(bash bench/gpu/run.sh OUT /path/to/TDS-CLIP)")
        return None
    try:
        return load_official(args.official)
    except Exception as exc:
        note(args.out, step, f"official rows skipped: {error_text(exc)}")
        return None


class OfficialStem:
    """The official SME stem, in the official layout ``[(B*T), M*3, H, W]``, on the official
    layer constructors (``conv_3xnxn_std``, ``BatchNorm3d``): the first lines of the official
    ``VisualTransformer.forward``, restated from the paper's Eq. 2-3 (centre frame through
    ``side_conv1``, consecutive differences through ``side_conv1_c5``, fused with 0.5)."""

    @staticmethod
    def build(mod, side_dim, patch, num_local, segments):
        import torch.nn as nn

        class OfficialStem(nn.Module):
            def __init__(self):
                super().__init__()
                self.T = segments
                self.side_conv1 = mod.conv_3xnxn_std(3, side_dim, kernel_size=patch, stride=patch)
                self.side_pre_bn3d = nn.BatchNorm3d(side_dim)
                self.side_conv1_c5 = mod.conv_3xnxn_std(3 * (num_local - 1), side_dim, kernel_size=patch,
                                                        stride=patch)
                self.side_pre_bn3d_c5 = nn.BatchNorm3d(side_dim)

            def forward(self, x):
                bt, mc, h, w = x.shape
                m = mc // 3
                f = x.view(bt, m, 3, h, w)
                diff = (f[:, 1:] - f[:, :-1]).reshape(bt, (m - 1) * 3, h, w)

                def vol(t):  # (b t) c h w -> b c t h w
                    return t.reshape(bt // self.T, self.T, *t.shape[1:]).transpose(1, 2)

                s_diff = self.side_pre_bn3d_c5(self.side_conv1_c5(vol(diff)))
                return self.side_pre_bn3d(self.side_conv1(vol(f[:, m // 2]))) + 0.5 * s_diff

        return OfficialStem()
