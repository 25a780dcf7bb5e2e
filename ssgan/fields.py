"""What each field of the configuration schema declares once: its role (part of a table cell's cache key or not,
changeable on a resume or not), the engines that refuse it, and the range of a number. ``config`` builds its
dataclasses from these constructors (``lr: float = schedule(0.003, bounds=POSITIVE)``) and reads the roles back
(``config.fields_with``, ``config.check_numbers``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import field
from typing import Any, Sequence, Tuple

# Every field of the schema declares its role once, here, in its dataclass metadata (``recipe(300)`` etc.):
# whether it is part of a table cell's cache key (``keyed``: it changes what a run computes) and whether
# ``ssgan fit --resume DIR KEY=VALUE`` may change it (``resumable``: it does not change the state a checkpoint
# holds). ``fields_with``, ``seeds.keyed_fields`` and ``refused_options`` read the roles; tests/test_config.py checks
# that every field has one.
ROLES = {
    "recipe": {"keyed": True, "resumable": False},  # what is trained: networks, data, method, batches
    "schedule": {"keyed": True, "resumable": True},  # how long and at which rates: a resume may extend it
    # How the numbers are computed (precision, TF32, compile, CUDA graph, determinism, memory layout): they change
    # a run's last bits, so they are keyed; the checkpoint is float32 with plain optimizers, so they are resumable.
    "numerics": {"keyed": True, "resumable": True},
    "data_path": {"keyed": True, "resumable": True},  # the user data's file: names the data, and may move
    # Where and how runs execute (device, data placement, seeds stacked or one after another, how many at once):
    # not keyed, so that a table can be continued on another machine or another way; result.json records each.
    "execution": {"keyed": False, "resumable": True},
    "reporting": {"keyed": False, "resumable": True},  # what a run shows and writes along the way
    "identity": {"keyed": False, "resumable": False},  # which run: the seed, its directory
}
ENGINES = ("stacked", "captured")  # concurrent.StackedEngine; engines.Captured (an iteration as a CUDA graph)


# The range of a number (low, high, low included, high included), where narrower than NON_NEGATIVE, the default
# of every int and float field (``check_numbers``).
NON_NEGATIVE = (0.0, math.inf, True, False)
POSITIVE = (0.0, math.inf, False, False)
UNIT = (0.0, 1.0, True, False)  # [0, 1): decays, betas, dropout
PROBABILITY = (0.0, 1.0, True, True)
# Sane upper bounds of what a run can use (a value beyond them diverges or underflows at once): a loss term's
# weight, a noise level (std in units of the scaled data), an init scale, a learning rate, Adam's epsilon.
WEIGHT = (0.0, 1e4, True, True)
NOISE = (0.0, 100.0, True, True)
INIT_SCALE = (0.0, 100.0, False, True)
RATE = (0.0, 10.0, False, True)
EPSILON = (0.0, 1.0, False, True)
AT_LEAST_ONE = (1.0, math.inf, True, False)  # train.epochs: zero would write a result for an untrained model


def _field(role: str, default: Any, *, test_set: bool = True, refused_by: Sequence[str] = (),
           refused_when: Any = None, bounds: Tuple[float, float, bool, bool] = NON_NEGATIVE) -> Any:
    """A schema field with its role. ``test_set`` (dataset fields): whether it fixes the test images;
    ``refused_by``: the engines (``ENGINES``) that cannot run the option when it is in use, i.e. when it equals
    ``refused_when`` (a value or a tuple of values) or, where that is None, differs from the default;
    ``bounds``: a number's range (``check_numbers``). A list default is copied per instance."""
    metadata = {"role": role, **ROLES[role], "test_set": test_set, "refused_by": tuple(refused_by),
                "refused_when": refused_when, "bounds": bounds}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# The roles as field constructors: ``lr: float = schedule(0.003, bounds=POSITIVE)``.
recipe, schedule, numerics = (functools.partial(_field, role) for role in ("recipe", "schedule", "numerics"))
data_path, execution = (functools.partial(_field, role) for role in ("data_path", "execution"))
reporting, identity = (functools.partial(_field, role) for role in ("reporting", "identity"))
