"""What ssgan takes from a file, and what it never does: a run directory is data, never code (docs/security.md).

A checkpoint, ``config.yaml``, ``result.json``, ``seeds.json`` or a saved estimator may come from someone else,
and a checksum inside it vouches for nothing (anyone who can write the file can recompute it). So nothing read
from a file is ever imported, instantiated, evaluated or unpickled beyond plain values:

- torch files are read with ``torch.load(weights_only=True)`` and ``.npz`` files with ``allow_pickle=False``;
- a stored config is plain values, checked against the schema; an OmegaConf interpolation in it (``${...}``)
  is refused, not resolved (``check_stored``);
- the networks of a ``model.arch=custom`` run are Hydra specs (``{_target_: import.path, **kwargs}``). Hydra
  instantiates only a spec *given* in this process by the person running ssgan: composed from their command
  line or config folders, their estimator parameters, or builders they named (``--discriminator
  MODULE:BUILDER``, ``ssgan.load(..., networks=...)``). A stored spec is only *compared* with those
  (``is_given``): equal, it is the user's own; else the run is refused with one line saying how to load it
  (``networks_for``). The keyword arguments a stored spec passes to named builders are plain values only.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, Optional, Sequence, Tuple

from .config import GIVEN_SPECS, Config, ConfigError, config_from_dict, spec_text

# A stored value may nest this deep (a config is 4 levels; a checkpoint's optimizer state about 6).
MAX_DEPTH = 32
# ... and hold at most this many values (a config holds a few hundred).
MAX_VALUES = 100_000
# Hydra's own keys of an instantiation spec: in a stored spec's arguments they would make Hydra call, import
# or rearrange; refused there (``_target_`` is replaced by the builder the person names).
HYDRA_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
HOW = ("--discriminator MODULE:BUILDER --generator MODULE:BUILDER (in Python: networks=(D, G), modules, "
       "classes or import paths)")


class UntrustedError(ConfigError):
    """A file names code, or a run of one's own networks is loaded without naming them: one line, exit 2."""


def give(spec: Any) -> None:
    """Record a network spec as given by the person running ssgan (builders they named); ``config.to_config``
    records those of the configs composed from their overrides and config folders."""
    if isinstance(spec, dict):
        GIVEN_SPECS.add(spec_text(spec))


def is_given(spec: Any) -> bool:
    """Whether a spec equals one given in this process: the only specs Hydra may instantiate."""
    return isinstance(spec, dict) and spec_text(spec) in GIVEN_SPECS


def forget_given() -> None:
    """Forget every given spec (a fresh process's state; for tests)."""
    GIVEN_SPECS.clear()


def refusal(spec: Any, what: str) -> UntrustedError:
    """The one line of a spec nobody gave in this process (read from a file, or built by hand in a Config)."""
    target = spec.get("_target_") if isinstance(spec, dict) else spec
    return UntrustedError(f"{what}={target!s:.80}: ssgan builds only networks given in this process (the command "
                          f"line, config folders, estimator parameters), never a spec read from a file; name "
                          f"them: {HOW}")


def check_stored(value: Any, where: str, depth: int = 0, budget: Optional[list] = None) -> None:
    """A config read from a file holds plain values only, at most ``MAX_VALUES`` of them (YAML's aliases make
    a few bytes stand for 10**12, all walked here), nested at most ``MAX_DEPTH`` deep, and no OmegaConf
    interpolation (``${oc.env:...}`` would be resolved by the schema check)."""
    budget = [MAX_VALUES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise UntrustedError(f"{where}: holds more than {MAX_VALUES:,} values; refused")
    if depth > MAX_DEPTH:
        raise UntrustedError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, sub in value.items():
            check_stored(sub, f"{where}.{key}", depth + 1, budget)
    elif isinstance(value, (list, tuple)):
        for sub in value:
            check_stored(sub, where, depth + 1, budget)
    elif isinstance(value, str) and "${" in value:
        raise UntrustedError(f"{where}={value!r:.60}: a stored config holds no interpolation; refused")
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        raise UntrustedError(f"{where}: a {type(value).__name__} where a config holds plain values")


def stored_config(values: Any, path: Any) -> Config:
    """The typed Config of a file's stored plain values (``check_stored``, then the schema); RunDirError-like
    one line (UntrustedError / ConfigError naming ``path``)."""
    if not isinstance(values, dict):
        raise UntrustedError(f"{path}: the stored config is a {type(values).__name__}, not a mapping")
    check_stored(values, f"{path}: config")
    try:
        cfg = config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    # A stored config never downloads into a folder it names (a resume may pass dataset.download=true again).
    return replace(cfg, dataset=replace(cfg.dataset, download=False))


def check_stored_overrides(overrides: Any, where: str) -> None:
    """A saved estimator's ``overrides`` parameter, read from its file: a refit composes them as if typed by
    the person running ssgan (so the network specs they compose would be given), so each may only set a field
    of the schema to a plain value. Refused: a key or dict key of Hydra's (``_target_``, ``_args_``, any
    ``_``-key), Hydra's own config (``hydra.*``, e.g. a search path), a package (``@``), a config group option
    that is not one of ssgan's (``dataset=../../x``: a YAML file elsewhere), an interpolation (``${...}``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .config import CONFIGS, group_options

    if not isinstance(overrides, (list, tuple)):
        raise UntrustedError(f"{where}: the stored overrides are a {type(overrides).__name__}, not a list")
    for text in overrides:
        line = f"{where}: the stored override {text!r:.80}"
        if not isinstance(text, str) or "${" in text:
            raise UntrustedError(f"{line} is not a plain KEY=VALUE; refused")
        try:
            override = OverridesParser.create().parse_overrides([text])[0]
            value = override.value()
        except Exception:  # Hydra's grammar errors
            raise UntrustedError(f"{line} is not a plain KEY=VALUE; refused") from None
        key = override.key_or_group
        parts = key.split(".")
        if (override.package is not None or "/" in key or parts[0] == "hydra" or override.is_sweep_override()
                or any(not p or p.startswith("_") for p in parts)):
            raise UntrustedError(f"{line} sets Hydra's own keys or config; refused (a saved estimator's "
                                 f"overrides set the schema's fields only)")
        if len(parts) == 1 and (CONFIGS / key).is_dir() and value not in group_options(key):
            raise UntrustedError(f"{line} names no config of ssgan's {key} group; refused")
        _no_hydra_keys(value, line)


def _no_hydra_keys(node: Any, line: str) -> None:
    if isinstance(node, dict):
        for key, sub in node.items():
            if str(key).startswith("_"):
                raise UntrustedError(f"{line} holds Hydra's key {key}; refused")
            _no_hydra_keys(sub, line)
    elif isinstance(node, (list, tuple)):
        for sub in node:
            _no_hydra_keys(sub, line)


def _plain_arguments(spec: Dict[str, Any], what: str) -> Dict[str, Any]:
    """A stored spec's keyword arguments, for a builder the person named: plain values without Hydra's keys."""
    arguments = {k: v for k, v in spec.items() if k != "_target_"}

    def check(node: Any) -> None:
        if isinstance(node, dict):
            for key, sub in node.items():
                if key in HYDRA_KEYS or str(key).startswith("_"):
                    raise UntrustedError(f"{what}: the stored spec's argument {key} is Hydra's, not a value; "
                                         f"refused (a named builder takes plain keyword arguments only)")
                check(sub)
        elif isinstance(node, (list, tuple)):
            for sub in node:
                check(sub)

    check(arguments)
    return arguments


def import_path(builder: Any, what: str) -> str:
    """``module:Builder`` or ``module.Builder`` (a string) or a class / function -> Hydra's dotted path."""
    if isinstance(builder, str):
        module, sep, name = builder.partition(":")
        if not (module and (name if sep else "." in module)):
            raise UntrustedError(f"{what}={builder!r}: expected MODULE:BUILDER, e.g. mypackage.nets:MyD")
        return f"{module}.{name}" if sep else module
    if callable(builder) and hasattr(builder, "__qualname__") and "<locals>" not in builder.__qualname__:
        return f"{builder.__module__}.{builder.__qualname__}"
    raise UntrustedError(f"{what}={builder!r}: expected a module, a class or function, or an import path")


def networks_for(cfg: Config, networks: Optional[Sequence[Any]], where: str
                 ) -> Tuple[Config, Optional[Tuple[Any, Any]]]:
    """The config a stored run is rebuilt from, and the modules to copy when ``networks`` are modules.

    ``networks``: (discriminator, generator) named by the person running ssgan: import paths
    (``module:Builder``), classes or functions (called with the stored spec's plain keyword arguments), or
    ``torch.nn.Module`` instances (copied, the stored weights loaded into them). A run of one's own networks
    without them is refused unless its stored specs equal ones given in this process (``is_given``)."""
    model = cfg.model
    if networks is None:
        if model.arch == "custom":
            for spec, what in ((model.discriminator, "discriminator"), (model.generator, "generator")):
                if not is_given(spec):
                    target = spec.get("_target_") if isinstance(spec, dict) else spec
                    raise UntrustedError(f"{where} was made with networks of its own ({what} {target!s:.80}); a "
                                         f"run directory is data, so ssgan imports nothing it names: load it by "
                                         f"naming them: {HOW}")
        return cfg, None
    if len(networks) != 2:
        raise UntrustedError(f"networks={networks!r}: expected (discriminator, generator)")
    if model.arch != "custom":
        raise UntrustedError(f"{where} was not made with networks of its own (model.arch={model.arch}); drop "
                             f"--discriminator / --generator (networks=)")
    from torch import nn

    if all(isinstance(n, nn.Module) for n in networks):
        return cfg, (networks[0], networks[1])
    specs = []
    for builder, spec, what in zip(networks, (model.discriminator, model.generator), ("discriminator", "generator")):
        stored = spec if isinstance(spec, dict) else {}
        given = {"_target_": import_path(builder, what), **_plain_arguments(stored, f"{where}: {what}")}
        give(given)
        specs.append(given)
    return replace(cfg, model=replace(model, discriminator=specs[0], generator=specs[1])), None
