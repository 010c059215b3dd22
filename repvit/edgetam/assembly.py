"""EdgeTAM assembled from Meta's ``sam2`` classes plus the trunk, perceiver and cross-attention.

Everything here needs ``sam2`` at import time; ``builder.py`` checks for it first. The settings
are EdgeTAM's released configuration (``sam2/configs/edgetam.yaml`` of facebookresearch/EdgeTAM
and the post-processing options its ``build_sam2*`` functions add), written out as Python so no
hydra config is needed.

Memory layout. sam2 stores a frame's memory as a ``(B, C, H, W)`` map and flattens it to tokens
when it attends to it. EdgeTAM's perceiver turns a map into ``(B, N, C)`` latents; they are stored
as ``(B, C, N, 1)``, which sam2 flattens back to exactly those N tokens, so sam2's video code
(memory bank, bfloat16 storage, cached position encoding, per-object tracking) runs unchanged.
"""
from __future__ import annotations

import torch
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.transformer import RoPEAttention
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_video_predictor import SAM2VideoPredictor
from torch import nn

from .perceiver import SpatialPerceiver
from .rope import RoPECrossAttention
from .trunk import RepViTTrunk

IMAGE_SIZE = 1024
HIDDEN_DIM = 256      # image embedding / SAM decoder width
MEMORY_DIM = 64       # memory encoder output, perceiver width
NUM_LATENTS = 256     # global latents per memory frame
NUM_LATENTS_2D = 256  # window latents per memory frame (a 16 x 16 grid)

# SAM2Base options of edgetam.yaml, plus the decoder post-processing that build_sam2 adds.
MODEL_OPTIONS = dict(
    num_maskmem=7, image_size=IMAGE_SIZE,
    sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
    use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True,
    use_high_res_features_in_sam=True, multimask_output_in_sam=True, iou_prediction_use_sigmoid=True,
    use_obj_ptrs_in_encoder=True, add_tpos_enc_to_obj_ptrs=False, only_obj_ptrs_in_the_past_for_eval=True,
    pred_obj_scores=True, pred_obj_scores_mlp=True, fixed_no_obj_ptr=True,
    multimask_output_for_tracking=True, use_multimask_token_for_obj_ptr=True,
    multimask_min_pt_num=0, multimask_max_pt_num=1, use_mlp_for_obj_ptr_proj=True, compile_image_encoder=False,
    sam_mask_decoder_extra_args=dict(dynamic_multimask_via_stability=True, dynamic_multimask_stability_delta=0.05,
                                     dynamic_multimask_stability_thresh=0.98),
)
# What build_sam2_video_predictor adds for video.
VIDEO_OPTIONS = dict(binarize_mask_from_pts_for_mem_enc=True, fill_hole_area=8)


def sine_encoding(channels: int) -> PositionEmbeddingSine:
    return PositionEmbeddingSine(num_pos_feats=channels, normalize=True, scale=None, temperature=10000)


def image_encoder() -> ImageEncoder:
    """RepViT-M1 trunk, 4-level FPN (top-down fusion on the two coarsest levels), stride-32 level dropped."""
    trunk = RepViTTrunk()
    neck = FpnNeck(position_encoding=sine_encoding(HIDDEN_DIM), d_model=HIDDEN_DIM,
                   backbone_channel_list=trunk.channel_list, fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
    return ImageEncoder(trunk=trunk, neck=neck, scalp=1)


def memory_attention(image_size: int = IMAGE_SIZE) -> MemoryAttention:
    """Two layers: RoPE self-attention on the 64x64 frame, RoPE cross-attention to the latent memory."""
    grid = image_size // 16
    window_grid = int(NUM_LATENTS_2D ** 0.5)
    layer = MemoryAttentionLayer(
        activation="relu", dim_feedforward=2048, dropout=0.1, pos_enc_at_attn=False, d_model=HIDDEN_DIM,
        pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        self_attention=RoPEAttention(rope_theta=10000.0, feat_sizes=(grid, grid), embedding_dim=HIDDEN_DIM,
                                     num_heads=1, downsample_rate=1, dropout=0.1),
        cross_attention=RoPECrossAttention(rope_theta=10000.0, q_sizes=(grid, grid),
                                           k_sizes=(window_grid, window_grid),
                                           tokens_per_frame=NUM_LATENTS + NUM_LATENTS_2D, embedding_dim=HIDDEN_DIM,
                                           num_heads=1, downsample_rate=1, dropout=0.1, kv_in_dim=MEMORY_DIM),
    )
    return MemoryAttention(d_model=HIDDEN_DIM, pos_enc_at_input=True, layer=layer, num_layers=2)


def memory_encoder() -> MemoryEncoder:
    fuser = Fuser(CXBlock(dim=HIDDEN_DIM, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
                  num_layers=2)
    return MemoryEncoder(out_dim=MEMORY_DIM, position_encoding=sine_encoding(MEMORY_DIM),
                         mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1), fuser=fuser)


def spatial_perceiver() -> SpatialPerceiver:
    return SpatialPerceiver(dim=MEMORY_DIM, depth=2, head_dim=64, heads=1, ff_mult=4, num_latents=NUM_LATENTS,
                            num_latents_2d=NUM_LATENTS_2D, position_encoding=sine_encoding(MEMORY_DIM),
                            self_attention=True)


class PerceiverMemory:
    """Mixin for sam2 models: each new memory goes through the spatial perceiver before it is stored."""

    def __init__(self, *, spatial_perceiver: nn.Module, **kwargs):
        super().__init__(**kwargs)
        self.spatial_perceiver = spatial_perceiver

    def _encode_new_memory(self, *args, **kwargs):
        features, encodings = super()._encode_new_memory(*args, **kwargs)
        latents, latent_pos = self.spatial_perceiver(features, encodings[0])
        # (B, N, C) -> (B, C, N, 1): sam2 flattens maps with flatten(2).permute(2, 0, 1), giving the N tokens back
        return as_map(latents), [as_map(latent_pos), *encodings[1:]]


def as_map(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.transpose(1, 2).unsqueeze(-1)


class EdgeTAM(PerceiverMemory, SAM2Base):
    """EdgeTAM for images (``SAM2ImagePredictor``) and single-step tracking (``track_step``)."""


class EdgeTAMVideoPredictor(PerceiverMemory, SAM2VideoPredictor):
    """EdgeTAM with sam2's video API (``init_state``, ``add_new_points_or_box``, ``propagate_in_video``).

    One change to sam2 1.1.0's tracking loop: a frame where an object received a correction (a
    click or mask on a frame that was already tracked) keeps its corrected output when the video
    is propagated again, as EdgeTAM's own predictor does. sam2 1.1.0 re-tracks such a frame without
    its prompts and the correction is lost (unless ``add_all_frames_to_correct_as_cond`` is set,
    which makes it a conditioning frame instead; sam2 issues #719 and #731).
    """

    def _run_single_frame_inference(self, inference_state, output_dict, frame_idx, batch_size, is_init_cond_frame,
                                    point_inputs, mask_inputs, reverse, run_mem_encoder, prev_sam_mask_logits=None):
        propagating = point_inputs is None and mask_inputs is None and run_mem_encoder and not is_init_cond_frame
        kept = corrected_output(inference_state, output_dict, frame_idx) if propagating else None
        if kept is not None:
            return kept, kept["pred_masks"].to(inference_state["device"], non_blocking=True)
        return super()._run_single_frame_inference(inference_state, output_dict, frame_idx, batch_size,
                                                   is_init_cond_frame, point_inputs, mask_inputs, reverse,
                                                   run_mem_encoder, prev_sam_mask_logits)


def corrected_output(state: dict, output_dict: dict, frame_idx: int):
    """The stored output of a non-conditioning frame that holds prompts of ``output_dict``'s object, if any."""
    obj_idx = next((i for i, d in state["output_dict_per_obj"].items() if d is output_dict), None)
    if obj_idx is None:
        return None
    prompted = frame_idx in state["point_inputs_per_obj"][obj_idx] or frame_idx in state["mask_inputs_per_obj"][obj_idx]
    stored = output_dict["non_cond_frame_outputs"].get(frame_idx)
    return stored if prompted and stored is not None and stored.get("maskmem_features") is not None else None


def assemble(video: bool = False, image_size: int = IMAGE_SIZE) -> nn.Module:
    """A freshly initialised EdgeTAM (or its video predictor), not yet in eval mode.

    ``image_size``: the square input side, a multiple of 256 (the perceiver's 16x16 windows on the
    stride-16 map). The released weights are trained at 1024; other sizes are for experiments and for
    checks whose subject does not depend on the size (a smaller frame makes a long memory run short)."""
    if image_size % 256 or image_size < 256:
        raise ValueError(f"EdgeTAM's input side must be a multiple of 256, got {image_size}")
    cls, options = (EdgeTAMVideoPredictor, {**MODEL_OPTIONS, **VIDEO_OPTIONS}) if video else (EdgeTAM, MODEL_OPTIONS)
    return cls(image_encoder=image_encoder(), memory_attention=memory_attention(image_size), memory_encoder=memory_encoder(),
               spatial_perceiver=spatial_perceiver(), **{**options, "image_size": int(image_size)})
