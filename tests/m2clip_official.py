"""Loading the official M2-CLIP model code (a git-ignored clone) for the M2-CLIP tests.

Make the copy (docs/m2clip.md §Parity) from the repository root::

    git clone https://github.com/sallymmx/m2clip .official/m2clip

``official_module()`` imports its ``models_adapter.py`` by path with stand-ins for the two
things it imports from outside (the ``configs`` paths module and BERT's prediction-head
transform from ``transformers``), put in ``sys.modules`` for the import only; the clone is
never edited. ``official_clip(...)`` builds the official ``CLIP`` with random weights
(float32, no CLIP file read) and the fp32-backward hook of docs/m2clip.md.
"""
import importlib.util
import os
import sys
import types

import torch.nn as nn

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".official", "m2clip")
MODELS_PY = os.path.join(ROOT, "models_adapter.py")
CLONE = "git clone https://github.com/sallymmx/m2clip .official/m2clip"
AVAILABLE = os.path.isfile(MODELS_PY)
SKIP_REASON = f"official M2-CLIP code not found: {CLONE}"

_MOD = []


class _BertTransform(nn.Module):
    """BERT's prediction-head transform (dense -> GELU -> LayerNorm, eps 1e-12), the keys
    ``dense.*`` and ``LayerNorm.*`` of the official MLM head."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=1e-12)

    def forward(self, x):
        return self.LayerNorm(nn.functional.gelu(self.dense(x)))


class _BertConfig:
    def __init__(self, vocab_size, hidden_size, **_):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size


def official_module():
    """The official ``models_adapter`` module (imported once)."""
    if _MOD:
        return _MOD[0]
    names = ("configs", "transformers", "transformers.models", "transformers.models.bert",
             "transformers.models.bert.modeling_bert")
    saved = {k: sys.modules.get(k) for k in names}
    try:
        cfg = types.ModuleType("configs")
        cfg.CLIP_VIT_B16_PATH = cfg.CLIP_VIT_B32_PATH = cfg.CLIP_VIT_L14_PATH = None
        cfg.DWCONV3D_DISABLE_CUDNN = True
        bert = types.ModuleType("transformers.models.bert.modeling_bert")
        bert.BertPredictionHeadTransform, bert.BertConfig = _BertTransform, _BertConfig
        sys.modules.update({"configs": cfg, "transformers": types.ModuleType("transformers"),
                            "transformers.models": types.ModuleType("transformers.models"),
                            "transformers.models.bert": types.ModuleType("transformers.models.bert"),
                            "transformers.models.bert.modeling_bert": bert})
        spec = importlib.util.spec_from_file_location("m2clip_official_models_adapter", MODELS_PY)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    _MOD.append(mod)
    return mod


def _clone_input(module, args):
    # the release adds the local-temporal-difference term in place into the tensor fc1 saved
    # for backward; under fp16 autocast fc1 saves a cast copy. In fp32 give fc1 a copy.
    return (args[0].clone(),)


# the official factories' arguments (clip_vit_base_patch16_multimodal_adapter{12,24}x384),
# without the CLIP file they read
B16 = dict(embed_dim=512, image_resolution=224, vision_patch_size=16, vision_width=768, vision_layers=12,
           vision_adapter_width=384, vision_adapter_layers=12, vision_adapter_kernel_size=(3, 1, 1),
           vision_adapter_pre_mlp=True, context_length=77, vocab_size=49408, transformer_width=512,
           transformer_heads=8, transformer_layers=13, text_adapter_width=384,
           text_adapter_kernel_size=(3, 1, 1), text_adapter_pre_mlp=True)
VARIANTS = {"12x384": dict(vision_adapter_pre_attn=False, text_adapter_layers=2, text_adapter_pre_attn=False),
            "24x384": dict(vision_adapter_pre_attn=True, text_adapter_layers=13, text_adapter_pre_attn=True)}


def official_clip(variant="12x384", num_classes=400, num_frames=8, mlm_head_len=520, **over):
    """The official ``CLIP`` with random float32 weights; ``over`` replaces factory arguments
    (e.g. fewer layers). Block 12 of the text tower is a copy of block 11, as the factory does."""
    mod = official_module()
    kw = dict(B16, **VARIANTS[variant])
    kw.update(over)
    model = mod.CLIP(num_classes=num_classes, num_frames=num_frames, mlm_head_len=mlm_head_len, **kw)
    blocks = model.transformer.resblocks
    mod.copy_weights(blocks[len(blocks) - 2], blocks[len(blocks) - 1])
    for m in model.modules():
        if type(m).__name__ == "Adapter2":
            m.fc1.register_forward_pre_hook(_clone_input)
    return model


def official_trainable(model):
    """``{name: numel}`` of what the release trains (every parameter named ``*adapter*``)."""
    return {n: p.numel() for n, p in model.named_parameters() if "adapter" in n}
