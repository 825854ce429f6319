"""PosENet: no encoder, the image itself is the feature (the paper's Table 4 control). Its
adapter answers that it has no weights, padding or taps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from posinfo.encoders.base import Adapter
from posinfo.errors import PosinfoError

if TYPE_CHECKING:
    from posinfo.encoder import Encoder


class PosENetAdapter(Adapter):
    def build(self, bb, normalize: str, image_size: int, lazy: bool) -> Encoder:
        if bb.model or bb.nodes or bb.pos_embed != "keep":
            key = "backbone.model" if bb.model else "backbone.nodes" if bb.nodes else "backbone.pos_embed"
            raise PosinfoError(f"{key} applies to backbone=timm or backbone=torchvision, not posenet: drop {key}")
        if bb.padding != "zeros":
            raise PosinfoError(f"backbone.padding={bb.padding} does not apply to posenet (no encoder): "
                               "set readout.padding instead")
        if bb.taps:
            raise PosinfoError(f"backbone.taps={list(bb.taps)} does not apply to posenet (no encoder): use backbone.taps=null")
        from posinfo.encoder import Encoder  # torch: only once a job builds it

        return Encoder(bb.name, None, {}, normalize)

    def identity(self, bb, seed: int) -> str:
        return "none"

    def problems(self, bb, image_size: int) -> list[str]:
        return []  # no weights to look for


ADAPTER = PosENetAdapter()
