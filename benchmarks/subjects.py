"""Models the benchmarks (and the tests) run on that the package does not ship."""

from kdiff_ztsnr.models.sdxl import COMPONENTS, component_config


def tiny_sdxl_configs() -> dict:
    """SDXL-shaped component configs small enough for CPU tests and benchmarks (64² images → 8² latents;
    CLIP-L 32 ⊕ bigG 48 context, pooled 40)."""
    l_dim, g_dim, g_proj, time_dim = 32, 48, 40, 8
    c = {k: component_config(None, k) for k in COMPONENTS}
    return {
        'unet': dict(c['unet'], block_out_channels=[16, 32, 32], attention_head_dim=[1, 2, 2],
                     transformer_layers_per_block=[1, 1, 2], norm_num_groups=8, cross_attention_dim=l_dim + g_dim,
                     addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=g_proj + 6 * time_dim,
                     sample_size=8),
        'vae': dict(c['vae'], block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
                    sample_size=64),
        'text_encoder': dict(c['text_encoder'], hidden_size=l_dim, intermediate_size=37, num_attention_heads=4,
                             num_hidden_layers=3, projection_dim=l_dim),
        'text_encoder_2': dict(c['text_encoder_2'], hidden_size=g_dim, intermediate_size=64, num_attention_heads=4,
                               num_hidden_layers=3, projection_dim=g_proj),
    }
