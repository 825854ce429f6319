"""posinfo's Hydra plugins: its launchers, its typed config schema and its resolvers.

Hydra imports every module of the ``hydra_plugins`` namespace when it starts (in the
launching process, joblib workers and Slurm jobs alike), so registering here makes the
schema (``base_<group>`` in the ConfigStore) and the ``${posinfo.*:}`` resolvers
available wherever posinfo's config is composed.
"""

from posinfo.schema import register
from posinfo.sweep.folders import register_resolvers

register()
register_resolvers()
