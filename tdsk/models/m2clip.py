"""M2-CLIP: a frozen CLIP adapted inside its blocks, trained with a video-text and a
classification objective (Wang et al., "M2-CLIP: A Multimodal, Multi-task Adapting Framework
for Video Action Recognition", AAAI 2024, arXiv 2401.11649, Fig. 2; docs/m2clip.md).

``M2CLIP.forward(video)``:

1. ``video[B, T, 1, 3, H, W]`` (CLIP-normalised). The frozen ViT
   (:class:`~tdsk.models.adapted_clip.AdaptedVisionTower`) runs all ``B*T`` frames with a
   :class:`~tdsk.models.m2clip_adapters.TEDAdapter` in the ``pre_mlp`` slot of every block
   (and ``pre_attn`` with ``model.adapter_pre_attn``: the "24x384" model); autograd runs
   through the frozen blocks;
2. video embedding (Eq. 5): frame embeddings ``proj(ln_post(cls_t))`` ``[B, T, E]`` ->
   :class:`~tdsk.models.m2clip_adapters.FrameAdapter` -> mean over ``T``;
3. class texts: the prompt (``model.text_prompt``, "A video of {}") of every class name through
   the frozen text tower (:class:`~tdsk.models.adapted_clip.AdaptedTextTower`) with
   :class:`~tdsk.models.m2clip_adapters.TextAdapter` s; recomputed every training step (the
   adapters train), cached otherwise (:class:`~tdsk.models.adapted_clip.ClassTextCache`);
4. the two heads (the multi-task objective, Sec. 3.4): the similarity logits
   ``100 * cos(video, text_k)`` and the linear head ``linear_head(dropout(ln_post(mean_t cls_t)))``.

Outputs: in eval mode the ``[B, K]`` logits of ``model.eval_logits`` (``similarity``, the
default, or ``fc``); in training mode a dict for :func:`m2clip_loss` (``logits`` is the same
choice). The release evaluates both heads separately (its "Acc@1" is the similarity head).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdsk._logging import log_once
from tdsk.models.adapted_clip import (AdaptedTextTower, AdaptedVisionTower, ClassTextCache, adapted_block_forward,
                                      tokenize)
from tdsk.models.m2clip_adapters import FrameAdapter, TEDAdapter, TextAdapter
from tdsk.models.text_tower import text_embeddings_deferred
from tdsk.models.video import VideoClassifier, as_video
from tdsk.schema import ConfigError

__all__ = ["M2CLIP", "m2clip_loss", "m2clip_logits", "m2clip_param_groups", "SIMILARITY_SCALE"]

#: The release scores videos against class texts at a fixed temperature of 100 (CLIP's
#: trained ``exp(logit_scale)``), in training and in evaluation; the video-text KL terms use
#: ``exp(logit_scale)`` of the CLIP weights.
SIMILARITY_SCALE = 100.0


def _slot_dict(pre_attn: bool, pre_mlp: bool, make) -> nn.ModuleDict:
    return nn.ModuleDict({k: make() for k, on in (("pre_attn", pre_attn), ("pre_mlp", pre_mlp)) if on})


class M2CLIP(VideoClassifier):
    """The M2-CLIP classifier (``model.variant: m2clip``; build it with :func:`tdsk.models.build_model`).

    Attributes: ``visual`` / ``text`` (the frozen towers), ``vision_adapters`` (one
    ``ModuleDict`` of TED-Adapters per visual block), ``frame_adapter``, ``text_adapters``
    (one per text block, empty where the block has none), ``linear_head``, ``decoder`` and
    ``mlm_head`` (``model.mlm`` only), ``logit_scale`` (buffer, log space), ``class_names``.
    """

    variant = "m2clip"

    def __init__(self, config: Dict, class_names: Optional[Sequence[str]] = None):
        super().__init__(config)
        c = self.config
        ckpt = bool(c["checkpoint"])
        self.visual = AdaptedVisionTower(c["arch"], c["clip_pretrained"], c["quick_gelu"], c["input_size"],
                                         checkpoint=ckpt)
        self.text = AdaptedTextTower(c["arch"], c["clip_pretrained"], c["quick_gelu"], checkpoint=ckpt)
        vis, txt, t = self.visual, self.text, self.num_segments
        width, embed = vis.width, vis.embed_dim
        self.vision_adapters = nn.ModuleList(
            [_slot_dict(bool(c["adapter_pre_attn"]), True, lambda: TEDAdapter(width, int(c["adapter_width"]), t))
             for _ in range(vis.layers)])
        self.frame_adapter = FrameAdapter(embed, int(c["frame_adapter_width"] or embed // 2))
        self.head_dropout = nn.Dropout(float(c["head_dropout"]))
        self.linear_head = nn.Linear(width, self.num_classes)
        nn.init.normal_(self.linear_head.weight, std=0.02)
        nn.init.zeros_(self.linear_head.bias)
        # text adapters: the last text_adapter_layers of the text blocks + the decoder block
        # (counted together, the decoder last, as the release builds its 13-block text tower)
        n_text, first = txt.layers, txt.layers + 1 - int(c["text_adapter_layers"])
        tw, pre_attn = int(c["text_adapter_width"]), bool(c["text_adapter_pre_attn"])
        self.text_adapters = nn.ModuleList(
            [_slot_dict(pre_attn and i >= first, i >= first, lambda: TextAdapter(txt.width, tw)) for i in range(n_text)])
        self.register_buffer("logit_scale", torch.tensor(txt.logit_scale_init, dtype=torch.float32))
        names = [str(n) for n in class_names] if class_names is not None else None
        placeholder = names is None and text_embeddings_deferred()
        if placeholder:  # rebuilt to load a checkpoint: the names come later (use_classes)
            names = [str(i) for i in range(self.num_classes)]
        if names is None:
            raise ConfigError("model.variant=m2clip needs the class names (its classifier is their CLIP text): set "
                              "data.labels in the recipe or pass build_model(..., class_names=[...])")
        if len(names) != self.num_classes:
            raise ConfigError(f"model.num_classes={self.num_classes} but {len(names)} class names were given "
                              "(data.labels)")
        # placeholder names are no names: class_names / trained_class_names stay None until the
        # first use_classes (a model folder's labels), which also sets the trained names
        self.class_names: Optional[List[str]] = None if placeholder else names
        self.trained_class_names: Optional[List[str]] = None if placeholder else list(names)  # what linear_head scores
        self._text_cache = ClassTextCache()
        self._tokens: Dict[tuple, torch.Tensor] = {}
        self.decoder = self.mlm_head = None
        self.mlm_vocab: Dict[str, int] = {}
        if c["mlm"]:
            from tdsk.models.m2clip_decoder import CrossModalDecoder, MLMHead, word_vocabulary  # noqa: PLC0415

            if embed != txt.width:
                raise ConfigError(f"model.mlm=true: the decoder attends text tokens (width {txt.width}) to frame "
                                  f"embeddings (width {embed}); {c['arch']} has different widths")
            dec = n_text >= first
            self.decoder = CrossModalDecoder(txt.blocks[-1], TextAdapter(txt.width, tw) if dec and pre_attn else None,
                                             TextAdapter(txt.width, tw) if dec else None)
            self.mlm_vocab = word_vocabulary(self.prompts(names))
            self.mlm_head = MLMHead(txt.width, len(self.mlm_vocab))

    # -- the contract of a text classifier ---------------------------------------------------------
    open_vocabulary = True
    live_class_texts = True  # class texts come from the text tower each time: a model folder's labels name them

    @property
    def feature_dim(self) -> int:
        return int(self.visual.embed_dim)

    def prompts(self, names: Sequence[str]) -> List[str]:
        return [self.config["text_prompt"].format(n) for n in names]

    def _text_slots(self):
        return [dict(d.items()) for d in self.text_adapters]

    def _text_params(self) -> List[torch.Tensor]:
        return [p for p in self.text_adapters.parameters()]

    def _names(self) -> List[str]:
        if self.class_names is None:
            raise ValueError("M2-CLIP has no class names: build it with class_names=[...] (data.labels), load a "
                             "model folder that has labels.txt, or call use_classes(names)")
        return self.class_names

    def _class_tokens(self, names: Sequence[str]) -> torch.Tensor:
        key = tuple(names)
        tok = self._tokens.get(key)
        device = self.text.tower.positional_embedding.device
        if tok is None or tok.device != device:
            tok = tokenize(self.prompts(names), self.text.context_length).to(device)
            self._tokens = {key: tok}
        return tok

    def _encode_names(self, names: Sequence[str]) -> torch.Tensor:
        return self.text(self._class_tokens(names), self._text_slots())[0]

    def class_text_features(self) -> torch.Tensor:
        """``[K, E]`` text embeddings of the model's classes (not normalised): with autograd in
        training, cached per weights version otherwise."""
        names = self._names()
        return self._text_cache.get((tuple(names), self.config["text_prompt"]), self._text_params(),
                                    lambda: self._encode_names(names))

    def text_embeddings_for(self, class_names: Sequence[str]) -> torch.Tensor:
        """``[K', E]`` text embeddings of other class names (prompt and text adapters of this
        model), for :meth:`classify`."""
        names = [str(n) for n in class_names]
        params = self._text_params() + list(self.text.parameters())
        with torch.no_grad():  # cached per names and weights version (ClassTextCache), like the model's classes
            return self._text_cache.get(("for", tuple(names), self.config["text_prompt"]), params,
                                        lambda: self.text.encode(self.prompts(names), self._text_slots()).float())

    def classify(self, emb: torch.Tensor, text_embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Video embeddings ``[B, E]`` -> similarity logits ``100 * cos`` ``[B, K]`` against the
        model's classes or ``text_embeddings`` ``[K', E]`` (open vocabulary). The linear head is
        not used here (it only knows the trained classes)."""
        text = self.class_text_features() if text_embeddings is None else text_embeddings.to(emb.device)
        v = F.normalize(emb.float(), dim=-1)
        return SIMILARITY_SCALE * v @ F.normalize(text.float(), dim=-1).t()

    def use_classes(self, class_names: Sequence[str]) -> None:
        """Classify among ``class_names`` from now on (current weights). ``class_names``,
        ``num_classes`` and ``config['num_classes']`` follow; the linear head cannot, so a model
        with ``eval_logits: fc`` switches to the similarity logits unless the names are the
        trained ones. On a model rebuilt without names (a checkpoint or folder about to be loaded,
        :func:`~tdsk.models.text_tower.placeholder_text_embeddings`), the first names given as many
        as the linear head has rows are also the trained names."""
        names = [str(n) for n in class_names]
        if not names:
            raise ValueError("use_classes: no class names")
        if self.trained_class_names is None and len(names) == self.linear_head.out_features:
            self._set_trained_names(names)
        self.class_names = names
        self.num_classes = self.config["num_classes"] = len(names)
        self._text_cache.clear()
        if self.config["eval_logits"] == "fc" and names != self.trained_class_names:
            log_once("m2clip-use-classes-fc", "M2-CLIP: other class names: the logits are now the similarity "
                     "logits (the linear head knows only the trained classes)", logging.WARNING)
            self.config["eval_logits"] = "similarity"

    def _set_trained_names(self, names: Sequence[str]) -> None:
        """The names the linear head (and the MLM vocabulary) belong to."""
        self.trained_class_names = [str(n) for n in names]
        if self.mlm_head is not None:
            from tdsk.models.m2clip_decoder import word_vocabulary  # noqa: PLC0415

            vocab = word_vocabulary(self.prompts(self.trained_class_names))
            if len(vocab) == self.mlm_head.bias.shape[0]:
                self.mlm_vocab = vocab

    # -- forward -----------------------------------------------------------------------------------
    def _vision_slots(self):
        return [dict(d.items()) for d in self.vision_adapters]

    def _frames(self, video: torch.Tensor) -> torch.Tensor:
        video = as_video(video, self.num_segments, self.num_local, self.visual.image_size)
        return video[:, :, 0].flatten(0, 1)

    def _heads(self, tokens: torch.Tensor, b: int):
        """Last-block tokens ``[B*T, 1+P, C]`` -> (video embedding ``[B, E]``, frame embeddings
        ``[B, T, E]``, linear-head logits ``[B, K]``)."""
        cls = tokens[:, 0].unflatten(0, (b, -1))                            # [B, T, C]
        fc = self.linear_head(self.head_dropout(self.visual.ln_post(cls.mean(dim=1))))
        frames = self.frame_adapter(self.visual.head(cls))                  # [B, T, E]
        return frames.mean(dim=1), frames, fc

    def encode_video(self, video: torch.Tensor):
        """(video embedding ``[B, E]``, frame embeddings ``[B, T, E]``, linear logits ``[B, K]``)."""
        frames = self._frames(video)
        return self._heads(self.visual(frames, self._vision_slots()), frames.shape[0] // self.num_segments)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """Video embeddings ``[B, E]`` (before the similarity classifier)."""
        return self.encode_video(video)[0]

    def _output_logits(self, emb: torch.Tensor, fc: torch.Tensor, text=None) -> torch.Tensor:
        return fc if self.config["eval_logits"] == "fc" else self.classify(emb, text)

    def cam_activations(self, video: torch.Tensor):
        """``(A [B, T, P, C], logits [B, K])`` for Grad-CAM (:mod:`tdsk.explain`): the patch tokens
        entering the last visual block (its output's patch tokens do not reach the class token)."""
        frames = self._frames(video)
        b, t = frames.shape[0] // self.num_segments, self.num_segments
        blocks, slots = list(self.visual.transformer.resblocks), self._vision_slots()
        with torch.no_grad():
            x = self.visual.embed(frames)
            for blk, s in zip(blocks[:-1], slots[:-1]):
                x = adapted_block_forward(blk, x, s)
        with torch.enable_grad():
            a = x[:, 1:].detach().unflatten(0, (b, t)).requires_grad_(True)
            x = torch.cat([x[:, :1], a.flatten(0, 1)], dim=1)
            emb, _, fc = self._heads(adapted_block_forward(blocks[-1], x, slots[-1]), b)
            return a, self._output_logits(emb, fc)

    def forward(self, video: torch.Tensor):
        """``video[B, T, 1, 3, H, W]`` -> logits ``[B, K]`` (eval) or the training dict (see module doc)."""
        emb, frames, fc = self.encode_video(video)
        if not self.training:
            return self._output_logits(emb, fc)
        text = self.class_text_features()
        out = {"logits": self._output_logits(emb, fc, text), "video": emb, "text": text, "fc_logits": fc,
               "logit_scale": self.logit_scale}
        if self.mlm_head is not None:
            _refuse_mlm_distributed()
            w = float(self.config["mlm_weight"])
            out["mlm"] = lambda labels: w * self.mlm_loss(frames, labels)  # weighted (the release: 1/10)
        return out

    def mlm_loss(self, frames: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The masked-word loss of the prompts of ``labels`` ``[B]`` given the frame embeddings."""
        from tdsk.models.m2clip_decoder import mask_prompts  # noqa: PLC0415

        names = self._names()
        prompts = self.prompts([names[i] for i in labels.tolist()])
        tokens, targets = mask_prompts(prompts, self.mlm_vocab, self.text.context_length,
                                       float(self.config["mlm_rate"]))
        tokens, targets = tokens.to(frames.device), targets.to(frames.device)
        x = self.text(tokens, self._text_slots())[1]
        x = self.text.tower.ln_final(self.decoder(x, frames))
        return F.cross_entropy(self.mlm_head(x).flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def _refuse_mlm_distributed() -> None:
    """The MLM term runs the decoder when the loss is computed, after ``forward`` (it needs the
    labels): DDP's gradient hooks would see those parameters a second time ("marked ready
    twice"). Refused with more than one process."""
    import torch.distributed as dist  # noqa: PLC0415

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise ConfigError(f"model.mlm=true is not supported in distributed training (world size "
                          f"{dist.get_world_size()}): its loss runs the decoder after the DDP forward; train on one "
                          "process or set model.mlm=false")


def _kl(logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """The release's KL loss: ``KL(softmax(10 * same) || softmax(logits))``, averaged over all
    ``B x B`` entries, times the batch size ``B`` (= the sum over entries / ``B``)."""
    return F.kl_div(F.log_softmax(logits, dim=1), F.softmax(same * 10, dim=1), reduction="sum") / logits.shape[0]


def m2clip_loss(outputs, targets: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
    """The multi-task loss (paper Sec. 3.4, Eq. 8, as the release computes it)::

        ((KL_v2t + KL_t2v) / 2 + CE(softmax(100 cos(v, t_k)))) / 2 + CE(fc) (+ w * MLM)

    ``KL_*``: the batch's video-to-text and text-to-video logits ``exp(s) cos(v_i, t_{y_j})``
    against the same-class matrix; the second CE is taken on the *softmax* of the similarity
    logits, as the release does. ``criterion``: the engine's cross-entropy (label smoothing,
    soft targets); soft targets use their arg-max classes in the KL terms.
    """
    if isinstance(outputs, torch.Tensor):
        raise ValueError("the M2-CLIP loss needs the training outputs (model.train()), got a logits tensor")
    hard = targets if targets.dim() == 1 else targets.argmax(dim=-1)
    v = F.normalize(outputs["video"].float(), dim=-1)
    t = F.normalize(outputs["text"].float(), dim=-1)
    pair = outputs["logit_scale"].float().exp() * v @ t[hard].t()            # [B, B]
    same = (hard[:, None] == hard[None, :]).float()
    contrast = (_kl(pair, same) + _kl(pair.t(), same)) / 2
    sim = (SIMILARITY_SCALE * v @ t.t()).softmax(dim=-1)
    loss = (contrast + criterion(sim, targets)) / 2 + criterion(outputs["fc_logits"].float(), targets)
    if "mlm" in outputs:
        loss = loss + outputs["mlm"](hard)
    return loss


def m2clip_logits(outputs) -> torch.Tensor:
    """The ``[B, K]`` logits of what :meth:`M2CLIP.forward` returns."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def m2clip_param_groups(model: nn.Module, solver) -> List[dict]:
    """The release's four AdamW groups: every trainable parameter (the adapters and the linear
    head) at ``solver.lr``, the text adapters at ``solver.lr / 2``; biases without weight decay,
    the rest ``solver.weight_decay``."""
    base, wd = float(solver["lr"]), float(solver.get("weight_decay", 0.0))
    groups: Dict[str, list] = {"decay": [], "text_decay": [], "no_decay": [], "text_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        text = name.startswith(("text_adapters.", "decoder.pre_"))
        key = ("text_" if text else "") + ("no_decay" if name.endswith(".bias") else "decay")
        groups[key].append(p)
    out = [{"params": ps, "name": g, "lr": base * (0.5 if g.startswith("text") else 1.0),
            "lr_scale": 0.5 if g.startswith("text") else 1.0,
            "weight_decay": 0.0 if g.endswith("no_decay") else wd} for g, ps in groups.items() if ps]
    if not out:
        raise ValueError("the model has no trainable parameters")
    return out
