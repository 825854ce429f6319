"""A user's ``nn.Module`` or precomputed feature maps (``backbone.name=module``, set by posinfo.probe)
as a frozen encoder: the module is looked up in posinfo.usermodels' registry by the key in
``backbone.model``, which is its whole cache identity (the encoder's name, ``module/<key>``)."""

from __future__ import annotations

import copy

from posinfo.encoder import Encoder, set_padding
from posinfo.encoders.base import Adapter, check_padding_by_trial
from posinfo.errors import PosinfoError
from posinfo.names import MODULE_BACKBONE
from posinfo.usermodels import FeatureTable, lookup


def _chosen_table(table: FeatureTable, taps: list[int] | None, nodes: list[str] | None, padding: str,
                  normalize: str) -> dict[str, str]:
    if padding != "zeros" or normalize != "none":
        raise PosinfoError("precomputed feature maps have no padding to change and take no input normalisation: "
                           "leave backbone.padding=zeros and data.normalize=none")
    if taps:
        raise PosinfoError("taps: feature maps are chosen by name, not level: give taps=['<name>', ...]")
    bad = [n for n in nodes or [] if n not in table.names]
    if bad:
        raise PosinfoError(f"taps: no feature map named '{bad[0]}': choose from {', '.join(table.names)}")
    return {n: n for n in (nodes or table.names)}


def _build(key: str, padding: str, taps: list[int] | None, nodes: list[str] | None, normalize: str) -> Encoder:
    """The frozen Encoder of registered module ``key``: cut at graph nodes found as for
    ``backbone=torchvision`` (posinfo.encoders.zoo.graph_taps), or a feature table's maps."""
    from posinfo.encoders import zoo

    module = lookup(key)
    name = f"{MODULE_BACKBONE}/{key}"
    nodes = [str(n) for n in nodes] if nodes else None
    if isinstance(module, FeatureTable):
        return Encoder(name, module, _chosen_table(module, taps, nodes, padding, normalize), normalize)
    if normalize == "model":
        raise PosinfoError(f"data.normalize=model uses pretrained weights' own statistics, and {key} has none: "
                           "use data.normalize=none or imagenet")
    skeleton = copy.deepcopy(module).to("meta")
    what = key.rsplit("-", 1)[0]
    try:
        chosen = zoo.graph_taps(skeleton, taps, nodes, what)
        check_padding_by_trial(skeleton, padding, what)
    except PosinfoError:
        raise
    except Exception as e:  # torch.fx cannot trace it, or it does not take a 3-channel image
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise PosinfoError(f"{what} cannot be traced by torch.fx to find its taps ({reason}): make its forward "
                           "traceable, or compute its feature maps yourself and probe them: "
                           "posinfo.probe({'tap': maps, ...}, None)") from None
    if padding != "zeros":  # the registered copy stays as given
        module = copy.deepcopy(module)
        set_padding(module, padding)
    return Encoder(name, zoo.GraphBody(module, chosen), chosen, normalize)



class ModuleAdapter(Adapter):
    def build(self, bb, normalize: str, image_size: int, lazy: bool) -> Encoder:
        return _build(str(bb.model), bb.padding, list(bb.taps) if bb.taps else None, bb.nodes, normalize)

    def identity(self, bb, seed: int) -> str:
        return "none"  # a module's weights: its content hash, in its name

    def problems(self, bb, image_size: int) -> list[str]:
        return []  # registered in this process: nothing to fetch


ADAPTER = ModuleAdapter()
