"""The job spec: a composed config as typed objects, made once, at a job's entrance.

``job_spec(cfg)`` checks a composed config (posinfo.schema.check_config: one line naming the
key, the value and the fix) and turns it into a :class:`JobSpec` of the schema's dataclasses
(``OmegaConf.to_object``). Everything below the entrance reads fields of those objects: each
value already has its type and every default comes from the schema, so no code restates a
default (``.get(key, default)``) or re-casts a value (``int(ro.padding)``).

Torch-free, like the schema.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, MissingMandatoryValue, ValidationError

from posinfo.errors import PosinfoError
from posinfo.schema import (GROUPS, AnalysisConfig, BackboneConfig, CacheConfig, DataConfig, InputConfig,
                            ReadoutConfig, TargetConfig, TrainConfig, check_config, group_keys)


@dataclass
class JobSpec:
    """One job's settings: a typed object per config group (posinfo.schema.GROUPS) and the
    top-level knobs a job reads. A preset's own keys (``pretraining``…) only label the job."""

    backbone: BackboneConfig
    target: TargetConfig
    input: InputConfig
    readout: ReadoutConfig
    data: DataConfig
    train: TrainConfig
    cache: CacheConfig
    analysis: AnalysisConfig
    device: str
    force: bool


def typed(cfg: DictConfig) -> JobSpec:
    """``cfg``'s groups as the schema's objects, without the checks of :func:`job_spec` (a finished
    job's config, read back by posinfo.trained with the schema's defaults filled in)."""
    groups = {}
    for group, cls in GROUPS.items():
        # A group composed from the schema is typed already; a plain one (a result's config) is
        # merged onto its schema, so both give the same object.
        try:
            # The group resolved against the whole config first: a preset's ${vgg16_weights} names a
            # top-level key, which a group merged on its own would no longer see.
            given = OmegaConf.to_container(cfg[group], resolve=True) if group in cfg else None
            node = OmegaConf.merge(OmegaConf.structured(cls), given) if given is not None else OmegaConf.structured(cls)
            groups[group] = OmegaConf.to_object(node)
        except (ConfigKeyError, MissingMandatoryValue, ValidationError, InterpolationResolutionError) as e:
            raise PosinfoError(_problem(group, e)) from None
    return JobSpec(**groups, device=cfg.device, force=cfg.force)


def _problem(group: str, e: Exception) -> str:
    """One line for a group that does not fit its schema: the key, what is wrong, the fix."""
    key = f"{group}.{getattr(e, 'full_key', None) or getattr(e, 'key', '')}"
    if isinstance(e, ConfigKeyError):
        return f"{key}: no such key in the schema: drop it (the keys of {group} are {', '.join(group_keys(group))})"
    if isinstance(e, InterpolationResolutionError):
        return f"{key}: {str(e).splitlines()[0]}: set the key it names on the command line, e.g. KEY=/path/to/..."
    if isinstance(e, MissingMandatoryValue):
        return f"{key}: a required value is not set: set it, e.g. {key}=..."
    return f"{key}: {str(e).splitlines()[0]}: give a value of the schema's type (posinfo.schema)"


def job_spec(cfg: DictConfig) -> JobSpec:
    """A composed config, checked (one line for the first bad value), as a :class:`JobSpec`."""
    check_config(cfg)
    return typed(cfg)
