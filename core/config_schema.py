"""Strict configuration: every key a verb reads is defined once, with its type and range, and checked first.

A verb's schema is its defaults (the YAML files it merges, plus sections whose defaults live in a config class,
e.g. `model` = policy/configuration_policy.py's dataclasses, `store` = features_store.StoreLayout) and `rules`
for what a default cannot say: the type of a key whose default is null, ranges, choices. A key the schema does
not define is refused with the nearest valid key (difflib), so `train.max_step=10` cannot silently train the
default 80k steps; a value of the wrong type or out of range is refused before any file is read or written.

Open maps: a key whose default is an empty mapping (`{}`) holds free-form keys, checked by its consumer; lists
(e.g. `slurm.setup`, `slurm.extra_sbatch`, `stage.*_overrides`) are values, not key sets. No section of the
shipped configs is open today: accelerate's own YAML (configs/accelerate/) is read by accelerate, not here, and
wandb settings beyond `train.wandb.*` go through WANDB_* environment variables.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from geo3d.core.config import ConfigError, load_config

KIND_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
              "list": "a list", "dict": "a mapping"}


@dataclass(frozen=True)
class Rule:
    """What a key accepts. kinds: int | float | str | bool | list | dict (an int is a valid float);
    min/max bound numbers (inclusive), above bounds them exclusively (a size that must be > 0, where 0 would
    refuse everything); choices restrict strings (and any other scalar); null allows null."""

    kinds: tuple[str, ...]
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()
    null: bool = False
    above: float | None = None

    def problem(self, value: Any) -> str | None:
        """Why `value` is refused (None when it is accepted)."""
        if value is None:
            return None if self.null else f"must be {self._expected()}, got null"
        if self.choices and not isinstance(value, bool) and value in self.choices:
            return None
        if not any(_is_kind(value, k) for k in self._free_kinds()):
            return f"must be {self._expected()}, got {value!r}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.min is not None and value < self.min:
                return f"must be >= {_num(self.min)}, got {value!r}"
            if self.above is not None and not value > self.above:  # `not >`: also refuses nan
                return f"must be > {_num(self.above)}, got {value!r}"
            if self.max is not None and value > self.max:
                return f"must be <= {_num(self.max)}, got {value!r}"
        return None

    def _free_kinds(self) -> tuple[str, ...]:
        """Kinds accepted beyond the choices: string choices (e.g. auto | bf16) close the `str` kind."""
        closed = any(isinstance(c, str) for c in self.choices)
        return tuple(k for k in self.kinds if not (closed and k == "str"))

    def _expected(self) -> str:
        names = [KIND_NAMES[k] for k in self._free_kinds()]
        if self.choices:
            names.append(f"one of {list(self.choices)}")
        return " or ".join(names) + (" (or null)" if self.null else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, (list, tuple))
    return isinstance(value, Mapping)


def Int(min: float | None = None, max: float | None = None, null: bool = False) -> Rule:  # noqa: N802
    return Rule(("int",), min, max, null=null)


def Float(min: float | None = None, max: float | None = None, null: bool = False,  # noqa: N802
          above: float | None = None) -> Rule:
    return Rule(("float",), min, max, null=null, above=above)


def Str(null: bool = False) -> Rule:  # noqa: N802
    return Rule(("str",), null=null)


def OneOf(*choices: Any, null: bool = False, also: Sequence[str] = ()) -> Rule:  # noqa: N802
    """One of `choices`, or a value of the kinds in `also` (e.g. OneOf("auto", also=("bool",)))."""
    return Rule(("str", *also), choices=tuple(choices), null=null)


def _inferred(default: Any) -> Rule | None:
    """The rule a non-null default implies: its own type."""
    for kind in ("bool", "int", "float", "str", "list", "dict"):
        if _is_kind(default, kind):
            return Rule((kind,))
    return None


class Schema:
    """The keys one verb reads. `files`: its defaults YAML (configs/...); `sections`: {top-level key: defaults
    mapping} for sections whose defaults are a config class's (merged below the YAML by build_config);
    `rules`: {dotted key or fnmatch pattern: Rule}. A key without a rule must have its default's type."""

    def __init__(self, verb: str, files: Sequence[str], sections: Mapping[str, Mapping[str, Any]] | None = None,
                 rules: Mapping[str, Rule] | None = None) -> None:
        self.verb, self.files = verb, tuple(files)
        self.sections, self.rules = dict(sections or {}), dict(rules or {})

    @functools.cached_property
    def defaults(self) -> dict[str, Any]:
        tree = OmegaConf.to_container(load_config(self.files), resolve=False)
        return {**tree, **{k: dict(v) for k, v in self.sections.items()}}  # type: ignore[dict-item]

    @functools.cached_property
    def leaves(self) -> dict[str, Any]:
        """Every defined key (dotted) -> its default; an open map ({}) is one leaf."""
        return dict(_flatten(self.defaults))

    def open_maps(self) -> list[str]:
        return [k for k, v in self.leaves.items() if isinstance(v, Mapping)]

    def rule(self, key: str) -> Rule | None:
        for pattern, rule in self.rules.items():
            if key == pattern or fnmatch.fnmatchcase(key, pattern):
                return rule
        return _inferred(self.leaves.get(key))

    def defines(self, key: str) -> bool:
        """A defined key, a section (`train` of train.*), or a key inside an open map."""
        return key in self.leaves or any(k.startswith(key + ".") for k in self.leaves) or self._in_open_map(key)

    def _in_open_map(self, key: str) -> bool:
        return any(key.startswith(m + ".") for m in self.open_maps())

    def union(self, *others: "Schema") -> "Schema":
        merged = Schema(self.verb, ())
        merged.__dict__["defaults"] = _deep_merge(*(o.defaults for o in others), self.defaults)
        for s in (*others, self):  # this schema's rules win
            merged.rules.update(s.rules)
        return merged

    def check(self, cfg: DictConfig, foreign: "Schema | None" = None,
              labels: Mapping[str, str] | None = None) -> DictConfig:
        """Refuse undefined keys and bad values (ConfigError, exit 2). Keys only `foreign` defines (another
        verb's, for `geo3d doctor`, which composes several verbs from one command line) are dropped.
        labels: {key: the CLI flag that set it}, named in the message (`--num-shards must be >= 1, got 0`)."""
        raw = OmegaConf.to_container(cfg, resolve=False)
        for key, value in _flatten(raw):  # type: ignore[arg-type]
            if key not in self.leaves and value != {} and self.defines(key) and not self._in_open_map(key):
                raise ConfigError(f"{key} is a section ({key}.*), not a value, got {value!r}; set its keys instead")
            if self.defines(key):
                continue
            if foreign is not None and foreign.defines(key):
                _drop(cfg, key)
                continue
            raise ConfigError(self._unknown(key, foreign))
        try:
            values = dict(_flatten(OmegaConf.to_container(cfg, resolve=True)))  # type: ignore[arg-type]
        except Exception as e:  # an interpolation naming a missing key, a bad resolver
            raise ConfigError(f"cannot resolve the config: {e}") from None
        for key, value in values.items():
            rule = self.rule(key)
            why = rule.problem(value) if rule is not None else None
            if why:
                if labels and key in labels:
                    raise ConfigError(f"{labels[key]} {why} ({key}); fix the flag")
                raise ConfigError(f"{key} {why}; fix the config file or the override")
        return cfg

    def _unknown(self, key: str, foreign: "Schema | None") -> str:
        known = list(self.leaves) + (list(foreign.leaves) if foreign is not None else [])
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        sections = sorted({k.split(".")[0] + (".*" if "." in k else "") for k in known})
        hint = f"did you mean {near[0]}?" if near else f"`geo3d {self.verb}` reads {', '.join(sections)}"
        where = f"`geo3d {self.verb}`'s config" if foreign is None else "any config this command reads"
        return f"unknown config key {key!r} (not defined by {where}); {hint}"


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; an empty mapping is a leaf (an open map)."""
    if isinstance(tree, Mapping) and tree:
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif prefix:
        yield prefix[:-1], tree


def _drop(cfg: DictConfig, key: str) -> None:
    """Delete `key`, then every parent section it leaves empty."""
    while key:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node:
            return
        del node[leaf]
        if len(node) or not parent:
            return
        key = parent


def _deep_merge(*trees: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tree in trees:
        for k, v in tree.items():
            out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and v \
                else v
    return out


# `data.*`, merged first into every verb's config (configs/data.yaml); the suite name is checked by the data
# layer (geo3d.data.suites), which lists the valid ones.
DATA_RULES: dict[str, Rule] = {
    "data.data_root": Str(null=True),
    "data.action_horizon": Int(min=1),
    "data.image_size": Int(min=14),
}
