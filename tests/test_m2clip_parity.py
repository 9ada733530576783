"""M2-CLIP parity with the official code (sallymmx/m2clip), read from a git-ignored copy.

Make the copy (docs/m2clip.md §Parity) from the repository root::

    git clone https://github.com/sallymmx/m2clip .official/m2clip
    pytest tests/test_m2clip_parity.py

Without ``.official/m2clip`` the tests skip. The official ``CLIP`` (models_adapter.py) is built
with random weights, its adapters perturbed away from their zero initialisation, saved as a
CLIP weights file (the frozen towers) plus a release checkpoint (``{'model': adapters}``), and
loaded into tdsk's M2-CLIP. Both run the same clips in float32 (the official model with the
fp32-backward hook, tests/m2clip_official.py) and the loss of the release's training step:
logits, loss and every trainable gradient must agree within 1e-4 relative.

Shapes: the K400 "12x384" model at full ViT-B/16 size (12 + 12 blocks, 224 px) with 4 frames and
2 clips (8 frames cost twice as much on a 2-core CPU); the SSv2 "24x384" model with 2 visual and
2 text blocks of B/16 width (its adapter layout differs per block, not per depth; the release's
text transformer runs a hard-coded 12 blocks, which the test restricts to the 2).
"""
import os

import pytest
import torch
import torch.nn.functional as F

from m2clip_official import AVAILABLE, SKIP_REASON, official_clip, official_trainable

pytestmark = [pytest.mark.skipif(not AVAILABLE, reason=SKIP_REASON),
              pytest.mark.filterwarnings("ignore:reduction")]  # the release's KLDivLoss("mean") * B

NAMES = ["abseiling", "playing accordion", "riding a bike", "waving hand", "opening a door"]
RTOL = float(os.environ.get("M2_RTOL", 1e-4))


def _clip_file(model, path):
    """The official model's frozen CLIP as an OpenAI-layout state dict (no adapters, no decoder block)."""
    last = len(model.transformer.resblocks) - 1
    sd = {k: v for k, v in model.state_dict().items()
          if "adapter" not in k and not k.startswith(f"transformer.resblocks.{last}.")}
    torch.save(sd, path)


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "adapter" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)


def _official_step(model, video, labels, tokens):
    """The release's training loss (main.py), MLM off, on ``video[B, 3, T, H, W]``."""
    lpi, lpt, img, _, _, fc = model(video, tokens[labels])
    text, _ = model.encode_text(tokens)
    text = text / text.norm(dim=-1, keepdim=True)
    same = (labels[:, None] == labels[None, :]).float()

    def kl(p):
        return F.kl_div(F.log_softmax(p, 1), F.softmax(same * 10, 1), reduction="mean") * p.shape[0]

    sim = 100.0 * img @ text.t()
    loss = ((kl(lpi) + kl(lpt)) / 2 + F.cross_entropy(sim.softmax(-1), labels)) / 2 + F.cross_entropy(fc, labels)
    return loss, sim, fc


def _close(a, b, what):
    err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)
    assert err < RTOL, f"{what}: relative error {err:.2e}"
    return err


def _parity(tmp_path, off, arch, t, size, b=2):
    from tdsk.models import build_model, load_checkpoint
    from tdsk.models.m2clip_official import official_key_map

    for m in off.modules():
        if type(m).__name__ == "Dropout":
            m.p = 0.0
    _perturb(off)
    _clip_file(off, tmp_path / "clip.pt")
    torch.save({"model": {n: p for n, p in off.named_parameters() if "adapter" in n}, "next_epoch": 1},
               tmp_path / "official.pth")
    ours = build_model("tiny_m2clip", class_names=NAMES, arch=arch, clip_pretrained=str(tmp_path / "clip.pt"),
                       num_classes=len(NAMES), num_segments=t, input_size=size, head_dropout=0.0,
                       adapter_width=384, text_adapter_width=384,
                       adapter_pre_attn=off.visual.transformer.resblocks[0].adapter_pre_attn is not None,
                       text_adapter_pre_attn=off.transformer.resblocks[-1].adapter_pre_attn is not None,
                       text_adapter_layers=sum(blk.adapter_pre_mlp is not None for blk in off.transformer.resblocks))
    report = load_checkpoint(ours, str(tmp_path / "official.pth"))
    assert report.format == "official"
    torch.manual_seed(1)
    video = torch.randn(b, t, 1, 3, size, size)
    labels = torch.tensor([1, 3] if b == 2 else list(range(b)))
    import open_clip

    tokens = open_clip.tokenize([f"A video of {n}" for n in NAMES])
    off.train()
    loss_o, sim_o, fc_o = _official_step(off, video[:, :, 0].transpose(1, 2).contiguous(), labels, tokens)
    loss_o.backward()
    ours.train()
    from tdsk.models.registry import loss_of

    out = ours(video)
    loss = loss_of(ours, out, labels, torch.nn.CrossEntropyLoss())
    loss.backward()
    errs = {"loss": _close(loss.detach(), loss_o.detach(), "loss"),
            "similarity": _close(out["logits"].detach(), sim_o.detach(), "similarity logits"),
            "fc": _close(out["fc_logits"].detach(), fc_o.detach(), "fc logits")}
    official = dict(off.named_parameters())
    grad_err = 0.0
    for name, theirs in official_key_map(ours).items():
        g_ours, g_off = dict(ours.named_parameters())[name].grad, official[theirs].grad
        assert g_ours is not None and g_off is not None, name
        grad_err = max(grad_err, _close(g_ours, g_off, f"grad {name} ({theirs})"))
    errs["grads"] = grad_err
    # export: the release's checkpoint keys (its load_model: every trained tensor, nothing else)
    from tdsk.models import export_official

    export_official(ours, str(tmp_path / "export.pth"), epoch=3)
    exported = torch.load(tmp_path / "export.pth", weights_only=True)
    assert exported["next_epoch"] == 4
    dead = {k for k in official_trainable(off) if k.startswith("mlm_adapter.")
            or k.startswith(f"transformer.resblocks.{len(off.transformer.resblocks) - 1}.")}
    assert set(exported["model"]) == set(official_trainable(off)) - dead
    missing, unexpected = off.load_state_dict(exported["model"], strict=False)
    assert not unexpected
    print("parity", arch, errs)
    return errs


def test_parity_k400_12x384_b16(tmp_path):
    off = official_clip("12x384", num_classes=len(NAMES), num_frames=4)
    _parity(tmp_path, off, "ViT-B-16", 4, 224)


def test_parity_ssv2_24x384_two_blocks(tmp_path):
    from tdsk.models.clip_encoder import TDSK_VIT_CONFIGS

    TDSK_VIT_CONFIGS.setdefault("m2clip-parity-B16-2", {
        "embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 2, "width": 768, "head_width": 64,
                                         "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 2}})
    off = official_clip("24x384", num_classes=len(NAMES), num_frames=4, vision_layers=2, vision_adapter_layers=2,
                        transformer_layers=3, text_adapter_layers=3)
    # the release's text transformer runs its first 12 blocks (a hard-coded "i < 12", the 13th
    # being the decoder): with 2 + 1 blocks here, run all but the decoder block
    blocks = list(off.transformer.resblocks)[:-1]

    def text_forward(x):
        for blk in blocks:
            x = blk(x)
        return x

    off.transformer.forward = text_forward
    _parity(tmp_path, off, "m2clip-parity-B16-2", 4, 224)
