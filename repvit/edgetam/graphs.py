"""EdgeTAM's tracking step cut into the four modules that ``repvit.edgetam.export`` writes to ONNX.

Each class wraps submodules of a built EdgeTAM (``repvit.edgetam.build_edgetam`` or
``build_video_predictor``: the same parameters, nothing copied) at the fixed 1024 input, batch 1
(one object), and computes what sam2 1.1.0's ``SAM2Base`` computes at that stage of a tracking step:

* ``ImageEncoderGraph``: ``forward_image``: RepViT trunk, FPN neck (stride-32 level dropped), the
  two high-resolution levels already projected by the mask decoder's ``conv_s0``/``conv_s1``, the
  stride-16 features and their sine position encoding (the memory attention's ``curr_pos``).
* ``PromptDecoderGraph``: ``_forward_sam_heads`` with points and, when ``has_mask_input`` is 1, a
  previous 256x256 mask as the dense prompt (how sam2 corrects an already-tracked frame), before the
  choice among masks: all four mask tokens' low-resolution logits (``NO_OBJECT_SCORE`` where the object
  score says "absent"), IoU predictions, object pointers (the pointer MLP of every mask token, the
  learned no-object pointer mixed in as sam2 does) and the object score. Which mask and pointer a
  step keeps depends on the number of points (see ``repvit.edgetam.onnx_predictor.choose``).
* ``MemoryEncoderGraph``: ``_encode_new_memory`` followed by EdgeTAM's spatial perceiver: the
  256x256 mask logits are upsampled to 1024 as sam2 does before encoding, binarized when the mask
  came from the user's points (``from_points`` 1) or passed through a sigmoid otherwise, scaled,
  fused with the frame's stride-16 features and compressed to 512 latent tokens with their
  position encoding.
* ``MemoryAttentionGraph``: the attention of ``_prepare_memory_conditioned_features`` for a frame
  that has memories, with a *fixed* number of memory slots and pointer slots and a validity flag
  per slot (keys of empty slots get ``MASKED_KEY`` before the softmax, so they weigh exactly nothing):
  fixed shapes keep the graph free of data-dependent sizes (what mobile runtimes need) and the
  RoPE of the memory keys per frame becomes a plain reshape.

Rotary encodings use cos/sin tables and real arithmetic (ONNX has no complex tensors); the
prompt embedding is written without sam2's in-place slice assignment. Both compute the same
numbers as sam2's code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NO_OBJECT_SCORE = -1024.0   # sam2's mask logit for "object absent"
POINTER_SPLIT = 4           # a 256-d object pointer enters the 64-d memory as 4 tokens


# What an empty memory slot's keys get before the softmax: exp() of it underflows to exactly 0 in float32
# (and float16) beside any real score, so they weigh nothing, as -inf would; but unlike -inf it keeps the
# statistics an INT8 calibrator gathers finite.
MASKED_KEY = -1.0e4


def rope_tables(cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A complex ``(N, D/2)`` rotation table as its float32 cosine and sine parts."""
    return cis.real.float().contiguous(), cis.imag.float().contiguous()


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2j, 2j+1)`` of ``x`` (``(..., N, D)``) by the angles of ``cos``/``sin``
    (``(N, D/2)``)."""
    pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


class ImageEncoderGraph(nn.Module):
    """``image`` 1x3x1024x1024 -> ``high_res_0`` 1x32x256x256, ``high_res_1`` 1x64x128x128,
    ``features`` 1x256x64x64, ``features_pos`` 1x256x64x64."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not model.use_high_res_features_in_sam:
            raise ValueError("EdgeTAM's decoder uses the high-resolution features; this model does not")
        self.image_encoder = model.image_encoder
        self.conv_s0 = model.sam_mask_decoder.conv_s0
        self.conv_s1 = model.sam_mask_decoder.conv_s1

    def forward(self, image: torch.Tensor):
        out = self.image_encoder(image)
        levels, encodings = out["backbone_fpn"], out["vision_pos_enc"]
        return self.conv_s0(levels[0]), self.conv_s1(levels[1]), levels[-1], encodings[-1]


class PromptDecoderGraph(nn.Module):
    """``image_embed`` (memory-conditioned features), ``high_res_0``, ``high_res_1``, ``point_coords``
    1xNx2 (the 1024 frame), ``point_labels`` 1xN, ``mask_input`` 1x1x256x256 (previous mask logits) and
    ``has_mask_input`` 1 (1.0: use it, 0.0: sam2's no-mask embedding) -> ``masks`` 1x4x256x256,
    ``iou_predictions`` 1x4, ``object_pointers`` 1x4x256, ``object_score_logits`` 1x1."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not (model.pred_obj_scores and model.use_obj_ptrs_in_encoder and model.fixed_no_obj_ptr
                and not model.soft_no_obj_ptr):
            raise ValueError("the decoder graph follows EdgeTAM's options: object scores, pointers in the "
                             "memory, a fixed no-object pointer")
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.obj_ptr_proj = model.obj_ptr_proj
        self.no_obj_ptr = model.no_obj_ptr
        h, w = self.prompt_encoder.input_image_size
        self.register_buffer("frame_size", torch.tensor([float(w), float(h)]), persistent=False)
        with torch.no_grad():
            self.register_buffer("dense_pe", self.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """sam2's ``PromptEncoder._embed_points`` with ``pad=True`` (a (0, 0) point labelled -1 appended)."""
        pe = self.prompt_encoder
        coords = torch.cat([coords + 0.5, torch.zeros_like(coords[:, :1])], dim=1)
        labels = torch.cat([labels, torch.full_like(labels[:, :1], -1.0)], dim=1).unsqueeze(-1)
        emb = pe.pe_layer._pe_encoding(coords / self.frame_size)
        emb = torch.where(labels == -1, torch.zeros_like(emb) + pe.not_a_point_embed.weight, emb)
        for i, table in enumerate(pe.point_embeddings):
            emb = torch.where(labels == i, emb + table.weight, emb)
        return emb

    def forward(self, image_embed, high_res_0, high_res_1, point_coords, point_labels, mask_input, has_mask_input):
        sparse = self.embed_points(point_coords, point_labels)
        grid = self.dense_pe.shape[-2:]
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, grid[0], grid[1])
        dense = torch.where(has_mask_input.reshape(-1, 1, 1, 1) > 0.5, self.prompt_encoder.mask_downscaling(mask_input),
                            no_mask)
        masks, ious, tokens, score = self.mask_decoder.predict_masks(
            image_embeddings=image_embed, image_pe=self.dense_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, repeat_image=False, high_res_features=[high_res_0, high_res_1])
        present = score > 0                                                    # (1, 1)
        masks = torch.where(present[:, :, None, None], masks, torch.full_like(masks, NO_OBJECT_SCORE))
        weight = present.float()[:, :, None]                                   # (1, 1, 1)
        pointers = weight * self.obj_ptr_proj(tokens)
        pointers = pointers + (1 - weight) * self.no_obj_ptr
        return masks, ious, pointers, score


class MemoryEncoderGraph(nn.Module):
    """``features`` 1x256x64x64 (the frame's own, not memory-conditioned), ``mask_logits`` 1x1x256x256,
    ``from_points`` 1 -> ``memory`` 1x512x64 and ``memory_pos`` 1x512x64 (the perceiver's latents)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model, "no_obj_embed_spatial", None) is not None or model.non_overlap_masks_for_mem_enc:
            raise ValueError("the memory encoder graph follows EdgeTAM's options (no spatial no-object "
                             "embedding, no overlap suppression)")
        self.memory_encoder = model.memory_encoder
        self.perceiver = model.spatial_perceiver
        self.size = int(model.image_size)
        self.scale = float(model.sigmoid_scale_for_mem_enc)
        self.bias = float(model.sigmoid_bias_for_mem_enc)

    def forward(self, features, mask_logits, from_points):
        logits = F.interpolate(mask_logits, size=(self.size, self.size), mode="bilinear", align_corners=False)
        mask = torch.where(from_points.reshape(-1, 1, 1, 1) > 0.5, (logits > 0).float(), torch.sigmoid(logits))
        mask = mask * self.scale + self.bias
        # the frame's features are given once for every object; expanded here, not broadcast inside the
        # encoder (OpenVINO's CPU plugin fuses the broadcast add into the convolution and fails on it)
        features = features.expand(mask.shape[0], -1, -1, -1)
        out = self.memory_encoder(features, mask, skip_mask_sigmoid=True)
        return self.perceiver(out["vision_features"], out["vision_pos_enc"][0])


class MemoryAttentionGraph(nn.Module):
    """The current frame's features conditioned on a memory bank of fixed size.

    Inputs: ``features``/``features_pos`` 1x256x64x64 (the image encoder's), ``memory`` and
    ``memory_pos`` 1xFx512x64 (memory encoder outputs, one slot per frame), ``memory_tpos`` 1xF
    int64 (sam2's ``t_pos`` of each slot: 0 for a conditioning frame, ``num_maskmem - k`` for the
    frame ``k`` steps back), ``memory_valid`` 1xF (1.0 used, 0.0 empty), ``object_pointers`` 1xPx256,
    ``pointer_valid`` 1xP. Output ``conditioned`` 1x256x64x64, the decoder's ``image_embed``.
    """

    def __init__(self, model: nn.Module, *, max_frames: int, max_pointers: int):
        super().__init__()
        attention = model.memory_attention
        for layer in attention.layers:
            if layer.pos_enc_at_attn or layer.pos_enc_at_cross_attn_queries or not layer.pos_enc_at_cross_attn_keys:
                raise ValueError("the memory attention graph follows EdgeTAM's layer options (position encoding "
                                 "on the cross-attention keys only)")
        if model.add_tpos_enc_to_obj_ptrs or model.hidden_dim != POINTER_SPLIT * model.mem_dim:
            raise ValueError("the memory attention graph expects EdgeTAM's pointers: 4 tokens each, no temporal "
                             "encoding")
        self.layers = attention.layers
        self.norm = attention.norm
        self.input_pos_scale = 0.1 if attention.pos_enc_at_input else 0.0
        self.tpos = model.maskmem_tpos_enc
        self.num_maskmem = int(model.num_maskmem)
        self.mem_dim = int(model.mem_dim)
        self.max_frames, self.max_pointers = int(max_frames), int(max_pointers)
        side = model.image_size // model.backbone_stride
        cross = attention.layers[0].cross_attn_image
        self.tokens_per_frame, self.rope_keys = int(cross.tokens_per_frame), int(cross.rope_keys)
        for name, cis in (("self", attention.layers[0].self_attn.compute_cis(end_x=side, end_y=side)),
                          ("query", cross.table_q), ("key", cross.table_k)):
            cos, sin = rope_tables(cis)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)

    def forward(self, features, features_pos, memory, memory_pos, memory_tpos, memory_valid, object_pointers,
                pointer_valid):
        _, c, h, w = features.shape
        b, frames, tokens = memory.shape[0], memory.shape[1], memory.shape[2]   # b: objects
        x = features.flatten(2).transpose(1, 2)
        x = x + self.input_pos_scale * features_pos.flatten(2).transpose(1, 2)
        tpos = self.tpos.reshape(self.num_maskmem, self.mem_dim)[self.num_maskmem - 1 - memory_tpos]   # (1, F, C)
        keys_pos = (memory_pos + tpos.unsqueeze(2)).reshape(b, frames * tokens, self.mem_dim)
        pointers = object_pointers.reshape(b, -1, self.mem_dim)                                       # (1, 4P, C)
        values = torch.cat([memory.reshape(b, frames * tokens, self.mem_dim), pointers], dim=1)
        keys = values + torch.cat([keys_pos, torch.zeros_like(pointers)], dim=1)
        valid = torch.cat([memory_valid[:, :, None].expand(b, frames, tokens).reshape(b, frames * tokens),
                           pointer_valid[:, :, None].expand(b, -1, POINTER_SPLIT).reshape(b, -1)], dim=1)
        bias = torch.where(valid > 0.5, torch.zeros_like(valid), torch.full_like(valid, MASKED_KEY))[:, None, None]
        for i, layer in enumerate(self.layers):
            x = x + self._self_attention(layer.self_attn, layer.norm1(x))
            if i == 0:   # the first self-attention reads the frame alone: computed once for every object
                x = x.expand(b, -1, -1)
            x = x + self._cross_attention(layer.cross_attn_image, layer.norm2(x), keys, values, bias, frames * tokens)
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return self.norm(x).transpose(1, 2).reshape(b, c, h, w)

    def _self_attention(self, attn, x):
        q = rotate_pairs(attn._separate_heads(attn.q_proj(x), attn.num_heads), self.self_cos, self.self_sin)
        k = rotate_pairs(attn._separate_heads(attn.k_proj(x), attn.num_heads), self.self_cos, self.self_sin)
        v = attn._separate_heads(attn.v_proj(x), attn.num_heads)
        return attn.out_proj(attn._recombine_heads(F.scaled_dot_product_attention(q, k, v)))

    def _cross_attention(self, attn, x, keys, values, bias, memory_tokens: int):
        q = rotate_pairs(attn._separate_heads(attn.q_proj(x), attn.num_heads), self.query_cos, self.query_sin)
        k = attn._separate_heads(attn.k_proj(keys), attn.num_heads)
        v = attn._separate_heads(attn.v_proj(values), attn.num_heads)
        b, heads, _, d = k.shape
        frames = memory_tokens // self.tokens_per_frame
        # batch and heads merged: the rotation's pair axis then makes a rank-5 tensor (Core ML's limit), not 6
        memory = k[:, :, :memory_tokens].reshape(b * heads, frames, self.tokens_per_frame, d)
        plain = memory[:, :, :self.tokens_per_frame - self.rope_keys]
        windows = rotate_pairs(memory[:, :, self.tokens_per_frame - self.rope_keys:], self.key_cos, self.key_sin)
        memory = torch.cat([plain, windows], dim=2).reshape(b, heads, memory_tokens, d)
        k = torch.cat([memory, k[:, :, memory_tokens:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return attn.out_proj(attn._recombine_heads(out))


__all__ = ["ImageEncoderGraph", "PromptDecoderGraph", "MemoryEncoderGraph", "MemoryAttentionGraph", "rotate_pairs",
           "rope_tables", "NO_OBJECT_SCORE", "POINTER_SPLIT"]
