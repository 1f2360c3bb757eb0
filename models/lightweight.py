"""The lightweight GAN of Liu et al., ICLR 2021 ("Towards Faster and Stabilized GAN Training for
High-fidelity Few-shot Image Synthesis", FastGAN): GLU upsampling blocks with Skip-Layer
Excitation in the generator, and a discriminator that also learns to reconstruct real images.

Departures from the paper's code, each for the shared spine:
- The discriminator has no BatchNorm (per-sample `critic_norm`, none by default, as in lucidrains'
  lightweight-gan): one forward over real and fake together then equals two, the zero-centred
  penalty stays per sample, and DDP gradients equal the full batch's.
- No spectral norm and no second 128 px discriminator branch: the decoders and the hinge carry the
  paper's stabilisation, and both cost time at 1024 px.
- Injected noise is off in eval mode, so the EMA generator's samples are a function of the latent
  alone (the fixed-noise grids are then identical across resumes).
"""
import torch
from einops import einsum, rearrange
from torch import nn

from models.layers import channels_at, critic_norm, doublings

RECONSTRUCTION_SIZE = 128  # the paper's decoders reconstruct at 128 x 128
LOGIT_SIZE = 5  # a 4x4 conv over the final 8x8 features: a 5x5 map of logits per image


def generator_sle_pairs(resolution: int) -> list[tuple[int, int]]:
    """(source, target) sizes of the generator's excitations: 8->128, 16->256, 32->512 at 1024 px;
    at lower resolutions the same 16x jump, ending at the output (4->64 at 64 px), at most three."""
    pairs = [(low, 16 * low) for low in (4, 8, 16, 32) if 16 * low <= resolution]
    # Below 64 px no 16x jump fits: 4 -> output keeps the one excitation the design rests on.
    return pairs[-3:] or [(4, resolution)]


def discriminator_sle_pairs(resolution: int) -> list[tuple[int, int]]:
    """(source, target) sizes of the discriminator's excitations, high resolution gating low:
    256->32, 128->16, 64->8 at 1024 px (the paper's); an 8x jump where it fits, else 4x (64 px),
    else 2x (32 px: 16->8, the only two feature sizes there)."""
    largest = resolution // 2  # the first feature map
    ratio = 8 if 8 * 8 <= largest else 4 if 4 * 8 <= largest else 2
    return [(ratio * low, low) for low in (32, 16, 8) if ratio * low <= largest]


def attention_sizes(resolution: int) -> tuple[int, ...]:
    """Feature sizes where both networks can hold an attention layer (the discriminator's blocks)."""
    return tuple(doublings(8, resolution // 2))


def crop_quarter(images: torch.Tensor, quarters: torch.Tensor) -> torch.Tensor:
    """Each sample's quarter number `quarters[i]` in 0..3 (row-major) of its own map."""
    parts = rearrange(images, "b c (qy h) (qx w) -> b (qy qx) c h w", qy=2, qx=2)
    return parts[torch.arange(len(quarters), device=images.device), quarters]


def through_blocks(net: nn.Module, x: torch.Tensor, features: dict[int, torch.Tensor]) -> torch.Tensor:
    """`net`'s blocks in order, each followed by its attention and excitation where it has them;
    every block's output is kept in `features` by size, for the excitations and decoders."""
    for size, block in zip(net.sizes, net.blocks):
        x = block(x)
        if str(size) in net.attention:
            x = net.attention[str(size)](x)
        if size in net.excitation_source:
            x = net.excitations[str(size)](x, features[net.excitation_source[size]])
        features[size] = x
    return x


class NoiseInjection(nn.Module):
    """Per-pixel Gaussian noise times a learned weight that starts at zero (FastGAN, after StyleGAN)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, _, h, w = x.shape
        return x + self.weight * torch.randn(b, 1, h, w, device=x.device, dtype=x.dtype)


class SkipLayerExcitation(nn.Module):
    """Channel gates from one feature map (pooled to 4x4) multiplied into another of a different size."""

    def __init__(self, source_channels: int, target_channels: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(source_channels, target_channels, 4, bias=False),
            nn.SiLU(),
            nn.Conv2d(target_channels, target_channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return target * self.gate(source)


class LinearAttention(nn.Module):
    """Efficient attention (Shen et al. 2021), residual: softmax over features for the queries and
    over positions for the keys, so the cost grows linearly with the number of pixels."""

    def __init__(self, channels: int, heads: int = 4, head_channels: int = 32):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Conv2d(channels, 3 * heads * head_channels, 1, bias=False)
        self.to_out = nn.Conv2d(heads * head_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[-2]
        q, k, v = rearrange(self.to_qkv(x), "b (qkv n d) h w -> qkv b n d (h w)", qkv=3, n=self.heads)
        q, k = q.softmax(dim=-2), k.softmax(dim=-1)
        context = einsum(k, v, "b n d i, b n e i -> b n d e")
        out = einsum(context, q, "b n d e, b n d i -> b n e i")
        return x + self.to_out(rearrange(out, "b n e (h w) -> b (n e) h w", h=height))


class UpBlock(nn.Module):
    """Nearest 2x upsampling, then (3x3 conv, [noise], BatchNorm, GLU) once, or twice with injected
    noise (FastGAN's UpBlock and UpBlockComp)."""

    def __init__(self, in_channels: int, out_channels: int, convs: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest")]
        for i in range(convs):
            layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, 2 * out_channels, 3, padding=1, bias=False))
            if convs > 1:
                layers.append(NoiseInjection())
            layers += [nn.BatchNorm2d(2 * out_channels), nn.GLU(dim=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LightweightGenerator(nn.Module):
    def __init__(
        self, latent_dim: int, resolution: int, channel_base: int, channel_max: int, attn_resolutions: tuple[int, ...] = ()
    ):
        super().__init__()
        width = lambda res: channels_at(res, channel_base, channel_max)  # noqa: E731
        self.init = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 2 * width(4), 4, bias=False), nn.BatchNorm2d(2 * width(4)), nn.GLU(dim=1)
        )
        # The paper alternates the two-conv block (8, 32, 128, 512) with the one-conv block.
        sizes = doublings(8, resolution + 1)
        self.blocks = nn.ModuleList(UpBlock(width(s // 2), width(s), convs=2 if s.bit_length() % 2 == 0 else 1) for s in sizes)
        self.sizes = sizes
        self.attention = nn.ModuleDict({str(s): LinearAttention(width(s)) for s in attn_resolutions})
        self.excitation_source = {target: source for source, target in generator_sle_pairs(resolution)}
        self.excitations = nn.ModuleDict(
            {str(t): SkipLayerExcitation(width(s), width(t)) for t, s in self.excitation_source.items()}
        )
        self.to_rgb = nn.Sequential(nn.Conv2d(width(resolution), 3, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.init(rearrange(z, "b c -> b c 1 1"))
        features = {4: x}
        x = through_blocks(self, x, features)
        return self.to_rgb(x)


class DownBlock(nn.Module):
    """A strided 4x4 conv path and an average-pool path, averaged (FastGAN's DownBlockComp)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 4, 2, 1),
            critic_norm(norm, out_channels),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            critic_norm(norm, out_channels),
            nn.LeakyReLU(0.2),
        )
        self.skip = nn.Sequential(
            nn.AvgPool2d(2), nn.Conv2d(in_channels, out_channels, 1), critic_norm(norm, out_channels), nn.LeakyReLU(0.2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.skip(x)) / 2


class SimpleDecoder(nn.Module):
    """8x8 features -> an RGB image of `size` (the paper's self-supervised reconstruction decoder)."""

    def __init__(self, in_channels: int, size: int, channel_base: int, channel_max: int, norm: str):
        super().__init__()
        width = lambda res: channels_at(2 * res, channel_base, channel_max)  # noqa: E731  (one step narrower)
        layers: list[nn.Module] = []
        channels = in_channels
        for s in doublings(16, size + 1):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(channels, 2 * width(s), 3, padding=1),
                critic_norm(norm, 2 * width(s)),
                nn.GLU(dim=1),
            ]
            channels = width(s)
        layers += [nn.Conv2d(channels, 3, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class LightweightDiscriminator(nn.Module):
    """Scores images with a 5x5 logit map each; given `quarters`, also reconstructs the first
    len(quarters) images whole (from 8x8 features) and each one's quarter (from 16x16 features)."""

    def __init__(
        self,
        resolution: int,
        channel_base: int,
        channel_max: int,
        norm: str = "none",
        attn_resolutions: tuple[int, ...] = (),
    ):
        super().__init__()
        width = lambda res: channels_at(res, channel_base, channel_max)  # noqa: E731
        self.from_rgb = nn.Sequential(nn.Conv2d(3, width(resolution // 2), 4, 2, 1), nn.LeakyReLU(0.2))
        self.sizes = list(reversed(doublings(8, resolution // 2)))  # output size of each block
        self.blocks = nn.ModuleList(DownBlock(width(2 * s), width(s), norm) for s in self.sizes)
        self.attention = nn.ModuleDict({str(s): LinearAttention(width(s)) for s in attn_resolutions})
        self.excitation_source = {target: source for source, target in discriminator_sle_pairs(resolution)}
        self.excitations = nn.ModuleDict(
            {str(t): SkipLayerExcitation(width(s), width(t)) for t, s in self.excitation_source.items()}
        )
        self.to_logits = nn.Sequential(nn.Conv2d(width(8), width(8), 1), nn.LeakyReLU(0.2), nn.Conv2d(width(8), 1, 4))
        self.reconstruct_whole = SimpleDecoder(width(8), min(RECONSTRUCTION_SIZE, resolution), channel_base, channel_max, norm)
        self.reconstruct_part = SimpleDecoder(width(16), min(RECONSTRUCTION_SIZE, resolution // 2), channel_base, channel_max, norm)

    def forward(
        self, images: torch.Tensor, quarters: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = self.from_rgb(images)
        features = {images.shape[-1] // 2: x}
        x = through_blocks(self, x, features)
        logits = self.to_logits(x).flatten(1)
        if quarters is None:
            return logits
        n = len(quarters)
        whole = self.reconstruct_whole(features[8][:n])
        part = self.reconstruct_part(crop_quarter(features[16][:n], quarters))
        return logits, (whole, part)
