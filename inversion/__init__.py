"""Pure-torch inversion library of InvEdit (no ComfyUI imports).

Entry points: :func:`invert` (DDIM / rectified-flow Euler inversion, or the FireFlow and
fixed-point solvers, with optional EasyInv and forward warm start) and :func:`replay` (its
deterministic reconstruction).
"""

from .ddim import (
    PREDICTION_EPS,
    PREDICTION_TYPES,
    PREDICTION_V,
    PREDICTION_VELOCITY,
    RULE_REFERENCE,
    RULE_SIMPLE,
    TIMESTEP_RULES,
    V_CONVERSION_QUERY,
    V_CONVERSION_STATE,
    V_CONVERSIONS,
    InversionConfig,
    InversionTrajectory,
    SourcePin,
    invert,
    replay,
)
from .easyinv import PRESETS as EASYINV_PRESETS
from .solvers import SOLVER_EULER, SOLVER_FIREFLOW, SOLVER_FIXED_POINT, SOLVERS
from .easyinv import EasyInvConfig
from .warm_start import WarmStartConfig

__all__ = [
    "EASYINV_PRESETS",
    "EasyInvConfig",
    "InversionConfig",
    "InversionTrajectory",
    "PREDICTION_EPS",
    "PREDICTION_TYPES",
    "PREDICTION_V",
    "PREDICTION_VELOCITY",
    "RULE_REFERENCE",
    "RULE_SIMPLE",
    "TIMESTEP_RULES",
    "V_CONVERSIONS",
    "V_CONVERSION_QUERY",
    "V_CONVERSION_STATE",
    "SOLVERS",
    "SOLVER_EULER",
    "SOLVER_FIREFLOW",
    "SOLVER_FIXED_POINT",
    "SourcePin",
    "WarmStartConfig",
    "invert",
    "replay",
]
