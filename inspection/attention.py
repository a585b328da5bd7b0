"""Channel + spatial attention for the detector, and its registration with ultralytics.

CBAM's idea (reweight channels, then locations) with ECA's channel step: a 1-D convolution
across the pooled channel descriptor instead of CBAM's two-layer MLP. Its weights do not depend
on the channel count, so the layer needs no channel argument in the model YAML and scales with
n/s/m widths without help from ultralytics' parser.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelSpatialAttention(nn.Module):
    gate_gain = 1.0  # each gate is gate_gain * sigmoid(...)

    def __init__(self, channel_kernel: int = 5, spatial_kernel: int = 7) -> None:
        super().__init__()
        self.channel_conv = nn.Conv1d(1, 1, channel_kernel, padding=channel_kernel // 2, bias=False)
        self.spatial_conv = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channel attention from average- and max-pooled descriptors, as in CBAM.
        avg = self.channel_conv(x.mean(dim=(2, 3)).unsqueeze(1))
        peak = self.channel_conv(x.amax(dim=(2, 3)).unsqueeze(1))
        x = x * self._gate(avg + peak).squeeze(1)[:, :, None, None]
        # Spatial attention over the channel-pooled maps.
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self._gate(self.spatial_conv(pooled))

    def _gate(self, logits: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(logits)
        return gate if self.gate_gain == 1.0 else gate * self.gate_gain


class GatedChannelSpatialAttention(ChannelSpatialAttention):
    """The same attention with its gates doubled (2 * sigmoid): about 1 when training starts, so
    the layer begins as the identity and learns to stress features (up to twice) or mute them.
    The plain gate starts near 0.5 and so first quarters the features at each layer (channel and
    spatial gate together); trained from scratch on NEU-DET at 100 epochs, that model did no
    better than its twin without attention (bench/results/detector_neu.json). Same weights, no
    extra parameters."""

    gate_gain = 2.0


PRODUCT_MODULES: tuple[type[nn.Module], ...] = (
    ChannelSpatialAttention,
    GatedChannelSpatialAttention,
)


def register_ultralytics_modules() -> None:
    """Make our layers known to ultralytics' YAML parser, which looks names up in its module."""
    from ultralytics.nn import tasks

    for module in PRODUCT_MODULES:
        setattr(tasks, module.__name__, module)
