"""SAM's mask decoder run for many prompts on one image without copying the image per prompt.

``MaskDecoder.predict_masks`` repeats the 256x64x64 image embedding (and its positional
encoding) once per prompt before its two-way transformer. Until the first image-to-token
attention the image side is the same for every prompt, and the transformer's modules broadcast
a batch of one against a batch of prompts, so here the embedding enters once: the first layer's
image projections are computed once instead of once per prompt, and the large per-prompt copies
disappear. The decoder's own modules do all the arithmetic; only the batching differs, so the
results equal ``mask_decoder(...)`` up to the last bits of float rounding (checked in
``tests/test_sam_everything.py``).

``decode_all_masks`` is that computation without checks or selection, every mask token's output:
the exported prompt decoders (``repvit.sam.decoder_graph``) run it too, so the project has one
re-statement of ``predict_masks``, not one per use.
"""
from __future__ import annotations

import torch


def decode_shared_image(decoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                        sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                        multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``decoder(...)`` (a ``segment_anything`` ``MaskDecoder``) for prompts without mask input.

    ``image_embeddings``, ``image_pe`` and ``dense_prompt_embeddings`` must describe one image
    (batch 1, or a dense embedding expanded from one); ``sparse_prompt_embeddings`` holds the B
    prompts. Returns low-resolution mask logits ``B x M x 256 x 256`` and IoU predictions ``B x M``.
    """
    if image_embeddings.shape[0] != 1 or image_pe.shape[0] != 1:
        raise ValueError("decode_shared_image takes the embedding of one image (batch 1)")
    dense = dense_prompt_embeddings[:1]
    if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) != 0 and not torch.equal(
            dense_prompt_embeddings, dense.expand_as(dense_prompt_embeddings)):
        raise ValueError("decode_shared_image needs the same dense prompt embedding for every prompt "
                         "(no per-prompt mask input)")
    masks, iou_pred = decode_all_masks(decoder, image_embeddings, image_pe, sparse_prompt_embeddings, dense)
    keep = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, keep], iou_pred[:, keep]


def decode_all_masks(decoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                     sparse_prompt_embeddings: torch.Tensor, dense_prompt_embedding: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every mask token's low-resolution logits ``B x 4 x 256 x 256`` and IoU predictions ``B x 4``.

    Channel 0 is the single-mask output, 1-3 the multimask outputs. ``image_embeddings``,
    ``image_pe`` and ``dense_prompt_embedding`` have batch 1 (one image); ``sparse_prompt_embeddings``
    holds the B prompts. No checks and no data-dependent branches, so ``torch.export`` and the ONNX
    and Core ML converters trace it as it is.
    """
    num_prompts = sparse_prompt_embeddings.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
    _, channels, height, width = image_embeddings.shape

    hs, src = decoder.transformer(image_embeddings + dense_prompt_embedding, image_pe, tokens)
    src = src.expand(num_prompts, -1, -1)  # no-op unless the transformer had no layers
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1:1 + decoder.num_mask_tokens, :]

    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(num_prompts, channels, height, width))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :])
                            for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token_out)
