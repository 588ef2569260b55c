"""SAM's prompt encoder and mask decoder, sized from a model-table architecture (shared by every encoder)."""

from __future__ import annotations

from typing import Any


def prompt_encoder_and_decoder(params: dict[str, Any], image_size: int, embedding_grid: int):
    """(PromptEncoder, MaskDecoder) of segment-anything for an ``image_size`` px input whose
    encoder gives an ``embedding_grid`` x ``embedding_grid`` embedding."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    embed_dim = params["prompt_embed_dim"]
    prompt_encoder = PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(embedding_grid, embedding_grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=params["decoder_mlp_dim"], num_heads=params["decoder_num_heads"]),
        transformer_dim=embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=params["iou_head_hidden_dim"],
    )
    return prompt_encoder, mask_decoder
