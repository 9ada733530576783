"""Parity of tdsk.models with an independent re-statement of the official model.

``OfficialTDSCLIP`` below is written from the specification (shared/spec/tds-clip.md,
sections 2-6) alone, in the official layout: sequence-first tokens, ``nn.Conv3d`` /
``nn.BatchNorm3d`` on ``(B, D, T, g, g)`` volumes, ``nn.MultiheadAttention``, the
official parameter names, and the official ``(B*T, M*3, H, W)`` input. It imports
nothing from ``tdsk.models``. tdsk's exported official state dict is loaded into it
*strictly*, with random weights and random BatchNorm statistics, and the logits are
compared in float32 (eval and train mode). The bound is what was measured, with a
10x margin (:data:`MEASURED_MAX_ABS_DIFF`), so a regression of a few ulp shows.
"""
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

# ---------------------------------------------------------------------------
# independent re-statement of docs/model.md (official layout and names)
# ---------------------------------------------------------------------------


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class RefResBlock(nn.Module):
    """OpenAI CLIP residual attention block, sequence-first (docs/model.md §3)."""

    def __init__(self, width):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, width // 64)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))
        ]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, z):
        h = self.ln_1(z)
        z = z + self.attn(h, h, h, need_weights=False)[0]
        return z + self.mlp(self.ln_2(z))


class RefSAModule(nn.Module):
    """TD-Adapter ``mse`` (docs/model.md §6), per-frame 2-D convs and BNs."""

    def __init__(self, d, reduction=16):
        super().__init__()
        r = d // reduction
        self.conv1 = nn.Conv2d(d, r, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(r)
        self.conv2 = nn.Conv2d(r, d, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(d)
        self.pool = nn.MaxPool3d((3, 1, 1), stride=1, padding=(1, 0, 0))

    def forward(self, y):  # (B, D, T, h, w)
        b, d, t, h, w = y.shape
        a = self.bn1(self.conv1(y.transpose(1, 2).reshape(b * t, d, h, w)))
        r = a.shape[1]
        a = a.view(b, t, r, h, w).transpose(1, 2)  # (B, R, T, h, w)
        delta = a - self.pool(a)
        q = 0.5 * delta + 0.5 * delta.mean(dim=1, keepdim=True)
        e = self.bn2(self.conv2(q.transpose(1, 2).reshape(b * t, r, h, w)))
        s = torch.sigmoid(e.view(b, t, d, h, w).transpose(1, 2)) - 0.5
        return y + y * s


class RefMlp(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc2(nn.GELU()(self.fc1(x)))  # exact erf GELU


class RefAttnCBlock(nn.Module):
    """Side block (docs/model.md §6), on sequence-first x (N, B*T, D)."""

    def __init__(self, d):
        super().__init__()
        self.bn_1 = nn.BatchNorm3d(d)
        self.conv = nn.Sequential(nn.Conv3d(d, d, 1), nn.Conv3d(d, d, (3, 1, 1), padding=(1, 0, 0), groups=d),
                                  nn.Conv3d(d, d, 1))
        self.bn_2 = nn.BatchNorm3d(d)
        self.mlp = RefMlp(d)
        self.attn = nn.MultiheadAttention(d, d // 64)
        self.ln_1 = nn.LayerNorm(d)
        self.mse = RefSAModule(d)

    @staticmethod
    def to_volume(x, t, g):  # "(h w) (b t) d -> b d t h w"
        n, bt, d = x.shape
        return x.view(g, g, bt // t, t, d).permute(2, 4, 3, 0, 1)

    @staticmethod
    def to_tokens(v):  # "b d t h w -> (h w) (b t) d"
        b, d, t, h, w = v.shape
        return v.permute(3, 4, 0, 2, 1).reshape(h * w, b * t, d)

    def forward(self, x, cls, pos, t):
        n, bt, d = x.shape
        g = int(round(n ** 0.5))
        # (a) temporal conv branch + TD-Adapter, pre-normed by BN
        vol = self.to_volume(x, t, g)
        vol = vol + self.mse(self.conv(self.bn_1(vol)))
        x = self.to_tokens(vol)
        # (b) CLS shift: first half from the next frame, second half from the previous one
        c = cls.view(1, bt // t, t, d)
        f = d // 2
        shifted = torch.zeros_like(c)
        shifted[:, :, :-1, :f] = c[:, :, 1:, :f]
        shifted[:, :, 1:, f:] = c[:, :, :-1, f:]
        shifted = shifted.view(1, bt, d)
        # (c) patch queries over [cls + patches]; E_pos only on the temporary
        xt = torch.cat([shifted, x + pos.unsqueeze(1)], dim=0)
        h = self.ln_1(xt)
        x = x + self.attn(h[1:], h, h, need_weights=False)[0]
        # (d) BN-pre-normed MLP
        v = self.to_tokens(self.bn_2(self.to_volume(x, t, g)))
        return x + self.mlp(v)


class RefTransformer(nn.Module):
    def __init__(self, width, layers, d, n):
        super().__init__()
        self.side_spatial_position_embeddings = nn.Parameter(torch.randn(n, d) * 0.01)
        self.side_lns = nn.ModuleList([nn.LayerNorm(width) for _ in range(layers)])
        self.resblocks = nn.ModuleList([RefResBlock(width) for _ in range(layers)])
        self.side_linears = nn.ModuleList([nn.Linear(width, d) for _ in range(layers)])
        self.side_transformer = nn.ModuleList([RefAttnCBlock(d) for _ in range(layers)])

    def forward(self, z, x, t):
        for k, blk in enumerate(self.resblocks):
            z = blk(z)
            u = self.side_linears[k](self.side_lns[k](z))
            x = 0.5 * x + 0.5 * u[1:]
            x = self.side_transformer[k](x, u[0:1], self.side_spatial_position_embeddings, t)
        return x


class RefVisual(nn.Module):
    def __init__(self, width, layers, patch, size, d):
        super().__init__()
        g = size // patch
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(g * g + 1, width) * width ** -0.5)
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = RefTransformer(width, layers, d, g * g)
        self.side_post_bn = nn.BatchNorm3d(d)
        k, s, p = (3, patch, patch), (1, patch, patch), (1, 1, 1)
        self.side_conv1 = nn.Conv3d(3, d, k, s, p)
        self.side_pre_bn3d = nn.BatchNorm3d(d)
        self.side_conv1_c5 = nn.Conv3d(12, d, k, s, p)
        self.side_pre_bn3d_c5 = nn.BatchNorm3d(d)

    def forward(self, x, t):  # x: (B*T, 15, H, W)
        bt = x.shape[0]
        b = bt // t
        frames = [x[:, 3 * m:3 * m + 3] for m in range(5)]
        centre = frames[2]
        delta = torch.cat([frames[j + 1] - frames[j] for j in range(4)], dim=1)

        def vol(v):  # "(b t) c h w -> b c t h w"
            return v.view(b, t, *v.shape[1:]).transpose(1, 2)

        s0 = self.side_pre_bn3d(self.side_conv1(vol(centre))) + 0.5 * self.side_pre_bn3d_c5(
            self.side_conv1_c5(vol(delta)))
        d = s0.shape[1]
        x_side = s0.permute(3, 4, 0, 2, 1).reshape(-1, bt, d)  # (h w) (b t) d
        z = self.conv1(centre).flatten(2).transpose(1, 2)
        z = torch.cat([self.class_embedding.view(1, 1, -1).expand(bt, 1, -1), z], dim=1) + self.positional_embedding
        z = self.ln_pre(z).transpose(0, 1)  # sequence-first
        x_side = self.transformer(z, x_side, t)
        v = self.side_post_bn(RefAttnCBlock.to_volume(x_side, t, int(round(x_side.shape[0] ** 0.5))))
        return v.mean(dim=(2, 3, 4))


class OfficialTDSCLIP(nn.Module):
    def __init__(self, width, layers, patch, size, d, classes, t=8):
        super().__init__()
        self.t = t
        self.visual = RefVisual(width, layers, patch, size, d)
        self.fc = nn.Linear(d, classes)

    def forward(self, x):
        return self.fc(self.visual(x, self.t))


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

SETTINGS = {
    # name: (tdsk arch registered below, C, P, H, D, K, T, B)
    "tiny": ("tdsk-ViT-Tiny-16", 64, 16, 64, 128, 10, 4, 2),
    "b16": ("test-ViT-B-16-depth2", 768, 16, 224, 320, 174, 8, 1),
    "l14": ("test-ViT-L-14-depth2", 1024, 14, 224, 512, 400, 4, 1),  # T=4 keeps the test quick
}


def _register_test_archs():
    from tdsk.models import register_vit_config

    register_vit_config("test-ViT-B-16-depth2", {"image_size": 224, "layers": 2, "width": 768,
                                                 "head_width": 64, "patch_size": 16}, embed_dim=512)
    register_vit_config("test-ViT-L-14-depth2", {"image_size": 224, "layers": 2, "width": 1024,
                                                 "head_width": 64, "patch_size": 14}, embed_dim=768)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine + running statistics, random biases and LN affines (the hard case)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                mod.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen))
                mod.bias.copy_(0.3 * torch.randn(c, generator=gen))
                mod.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=gen))
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.dim() == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def build_pair(setting: str, **overrides):
    from tdsk.models import build_model, official_state_dict

    _register_test_archs()
    arch, c, p, h, d, k, t, b = SETTINGS[setting]
    torch.manual_seed(0)
    model = build_model("tiny", arch=arch, input_size=h, side_dim=d, num_classes=k, num_segments=t,
                        clip_pretrained=None, **overrides)
    randomize_(model)
    ref = OfficialTDSCLIP(c, model.encoder.layers, p, h, d, k, t)
    ref.load_state_dict(official_state_dict(model), strict=True)
    return model, ref


def random_video(setting: str, seed: int = 1):
    _, c, p, h, d, k, t, b = SETTINGS[setting]
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 5, 3, h, h, generator=gen)


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


# Max |logit difference| measured on CPU (fp32, torch 2.15; the same with the C++ ops
# and with TDSK_DISABLE_EXT=1), logits of magnitude ~0.25-0.5 (one ulp ~3e-8 - 6e-8).
# The tests allow 10x these values.
MEASURED_MAX_ABS_DIFF = {
    "tiny": 7.5e-8,
    "b16": 9.7e-8,  # README: "to 9e-8 (B/16 setting)"
    "l14": 1.2e-7,
    "train/kernel": 4.5e-8,
    "train/folded": 1.2e-7,
}
MARGIN = 10


def _check_parity(key: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    err = (ours - theirs).abs().max().item()
    bound = MARGIN * MEASURED_MAX_ABS_DIFF[key]
    print(f"parity {key}: max abs logit diff {err:.3g} (bound {bound:.3g}, logit std {theirs.std().item():.3g})")
    assert err <= bound, f"{key}: max abs logit diff {err:.3g} > {bound:.3g} (logit std {theirs.std().item():.3g})"


@pytest.mark.parametrize("setting", ["tiny", "b16", "l14"])
def test_eval_fp32_parity_with_independent_reference(setting):
    model, ref = build_pair(setting)
    model.eval()
    ref.eval()
    video = random_video(setting)
    with torch.no_grad():
        ours = model(video)
        theirs = ref(video.reshape(-1, 15, *video.shape[-2:]))  # official (B*T, 15, H, W) layout
    _check_parity(setting, ours, theirs)


@pytest.mark.parametrize("sme_mode", ["kernel", "folded"])
def test_train_mode_parity_and_running_stats(sme_mode):
    """Train-mode BN (batch statistics) gives the same logits and the same running-stat updates."""
    model, ref = build_pair("tiny", sme_mode=sme_mode)
    model.train()
    ref.train()
    video = random_video("tiny", seed=3)
    ours = model(video)
    theirs = ref(video.reshape(-1, 15, *video.shape[-2:]))
    _check_parity(f"train/{sme_mode}", ours, theirs)
    from tdsk.models import official_state_dict

    mine = official_state_dict(model)
    for key, value in ref.state_dict().items():
        if "running" in key or "num_batches" in key:
            assert torch.allclose(mine[key].float(), value.float(), atol=1e-5), key


def test_gradients_match_reference():
    model, ref = build_pair("tiny")
    video = random_video("tiny", seed=4)
    model(video).square().sum().backward()
    ref(video.reshape(-1, 15, *video.shape[-2:])).square().sum().backward()
    from tdsk.models import official_key_map

    mapping = official_key_map(model)
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g_ref = ref_params[mapping[name]].grad
        torch.testing.assert_close(p.grad, g_ref, atol=2e-4, rtol=2e-3, msg=lambda m: f"{name}: {m}")
