"""Building blocks of the Imagen Unet, channels-last."""

from imagen_keras.layers.attention import (
    Attention,
    CrossAttention,
    FeedForward,
    LinearAttention,
    LinearAttentionTransformerBlock,
    LinearCrossAttention,
    TransformerBlock,
)
from imagen_keras.layers.embeddings import LearnedSinusoidalPosEmb
from imagen_keras.layers.norms import ChanRMSNorm, LayerNorm
from imagen_keras.layers.perceiver import PerceiverAttention, PerceiverResampler
from imagen_keras.layers.resnet import Block, GlobalContext, ResnetBlock
from imagen_keras.layers.sampling import (
    CrossEmbedLayer,
    Downsample,
    ParallelConv,
    PixelShuffleUpsample,
    Upsample,
    UpsampleCombiner,
    pixel_shuffle,
    pixel_unshuffle,
    resize_image_to,
)

__all__ = [
    "Attention",
    "Block",
    "ChanRMSNorm",
    "CrossAttention",
    "CrossEmbedLayer",
    "Downsample",
    "FeedForward",
    "GlobalContext",
    "LayerNorm",
    "LearnedSinusoidalPosEmb",
    "LinearAttention",
    "LinearAttentionTransformerBlock",
    "LinearCrossAttention",
    "ParallelConv",
    "PerceiverAttention",
    "PerceiverResampler",
    "PixelShuffleUpsample",
    "ResnetBlock",
    "TransformerBlock",
    "Upsample",
    "UpsampleCombiner",
    "pixel_shuffle",
    "pixel_unshuffle",
    "resize_image_to",
]
