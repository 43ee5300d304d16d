"""``CacheConfig``: the seed's YAML as validated pydantic models.

All five blocks live in one file and every block and key is optional; a missing key takes the seed's value::

    cache:
      memory:  {size: 1000, type: lru, compression: true}      # size in MB (1 MB = 1 MiB)
      disk:    {size: 10000, path: ./cache, cleanup_interval: 3600}
      network: {url: "redis://localhost:6379/0"}                # optional; absent = no network tier
    model_cache:    {size: 1024, format: safetensors, compression: true, cleanup_policy: lru}
    training_cache: {size: 512, batch_buffer: 32, prefetch: 4, cleanup_policy: fifo}
    system_cache:   {size: 256, temp_dir: .cache/temp, max_age: 86400, cleanup_policy: time}
    kv_cache:       {size: 4096, block_tokens: 256, compression: true, cleanup_policy: lru}

Sizes are megabytes as numbers, or strings with a unit (``"512KB"``, ``"4GB"``, ``"1.5GiB"``), always
stored as float MB; each block with a size has ``size_bytes``. Durations are seconds (``"1h"`` works too).

Every problem raises :class:`~llamahome.errors.ConfigError` naming the YAML path and what is accepted,
for example ``cache.memory.type: unknown policy 'lruu'; use one of lru, lfu, fifo, time.`` Pydantic's
own errors never escape. Models validate on assignment, so a config stays valid after construction.

    >>> cfg = CacheConfig(memory_size=512)
    >>> cfg.cache.memory.size, cfg.cache.memory.size_bytes, cfg.cleanup_interval
    (512.0, 536870912, 3600.0)
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from llamahome.errors import ConfigError

from .policies import POLICY_NAMES
from .units import MIB, parse_duration, parse_size, shown

__all__ = [
    "POLICIES",
    "CacheConfig",
    "CacheSection",
    "DiskConfig",
    "MemoryConfig",
    "ModelCacheConfig",
    "NetworkConfig",
    "Policy",
    "SystemCacheConfig",
    "KVCacheConfig",
    "TrainingCacheConfig",
    "load_config",
]

#: Eviction policies every store understands ("time" = oldest first; past max age or ttl goes first).
POLICIES: tuple[str, ...] = POLICY_NAMES
Policy = Literal["lru", "lfu", "fifo", "time"]


# ---------------------------------------------------------------------------------------------- field types
def _integral(value: float) -> int | float:
    """Write 1000.0 as 1000 in YAML/dicts so the effective config reads like the seed."""
    return int(value) if float(value).is_integer() else value


def _policy(value: object) -> str:
    if isinstance(value, str) and value.strip().lower() in POLICIES:
        return value.strip().lower()
    given = shown(value) if isinstance(value, str) else f"{shown(value)} ({type(value).__name__})"
    hint = _did_you_mean(value, POLICIES) if isinstance(value, str) and len(value) <= 100 else ""
    raise ValueError(f"unknown policy {given}; use one of {', '.join(POLICIES)}.{hint}")


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, not {shown(value)}.")


def _path(value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a directory path (a non-empty string), not {shown(value)}.")
    if "\0" in value:
        # The OS cannot open such a path; refuse it here rather than as a bare ValueError when a store opens.
        raise ValueError(f"a path cannot contain a NUL character (\\0), as {shown(value)} does; fix the path.")
    # "~/.cache/llamahome" is how people write cache paths; relative paths stay relative to the working directory.
    return os.path.expanduser(value) if value.startswith("~") else value


def _count(minimum: int) -> Any:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise ValueError(f"expected a whole number >= {minimum}, not {shown(value)}.")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, not {shown(value)}.")
        return int(value)

    return BeforeValidator(check)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, not {shown(value)}.")
    return value


def _size(value: object) -> float:
    try:
        return parse_size(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None  # a plain ValueError: _translate prefixes it with the YAML path


def _seconds(value: object) -> float:
    try:
        return parse_duration(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


SizeMB = Annotated[float, BeforeValidator(_size), PlainSerializer(_integral)]
Seconds = Annotated[float, BeforeValidator(_seconds), PlainSerializer(_integral)]
PolicyName = Annotated[Policy, BeforeValidator(_policy)]
Flag = Annotated[bool, BeforeValidator(_flag)]
PathText = Annotated[str, BeforeValidator(_path)]
Text = Annotated[str, BeforeValidator(_text)]


def _did_you_mean(word: object, choices: Any) -> str:
    text = word if isinstance(word, str) else shown(word)
    if len(text) > 100:
        return ""
    close = difflib.get_close_matches(text.lower(), list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


# ---------------------------------------------------------------------------------------------- the blocks
_UNSET: Any = object()


class _FieldProblem(ValueError):
    """A cross-field check's complaint, tagged with the key it should be reported under."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class _Block(BaseModel):
    """Base of every block: unknown keys are errors, assignment is validated, None means "all defaults"."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)

    #: Where this block lives in the YAML; used in error messages raised on assignment.
    yaml_path: ClassVar[str] = ""

    def __setattr__(self, name: str, value: Any) -> None:
        before = self.__dict__.get(name, _UNSET)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            # pydantic stores the field before running model validators; put the old value back so a
            # refused assignment leaves the config as it was.
            if before is not _UNSET and self.__dict__.get(name, _UNSET) is not before:
                self.__dict__[name] = before
            raise _translate(exc, prefix=self.yaml_path) from exc


class _SizedBlock(_Block):
    size: SizeMB

    @property
    def size_bytes(self) -> int:
        """``size`` in bytes, ``int(size * 1_048_576)``: the bound byte-bounded stores enforce."""
        return max(1, int(self.size * MIB))


class MemoryConfig(_SizedBlock):
    """``cache.memory``: the in-process tier in front of everything."""

    yaml_path: ClassVar[str] = "cache.memory"
    size: SizeMB = 1000.0
    type: PolicyName = "lru"
    compression: Flag = True


class DiskConfig(_SizedBlock):
    """``cache.disk``: the persistent tier shared by the processes of one machine."""

    yaml_path: ClassVar[str] = "cache.disk"
    size: SizeMB = 10000.0
    path: PathText = "./cache"
    cleanup_interval: Seconds = 3600.0


class NetworkConfig(_Block):
    """``cache.network``: the optional Redis tier shared by several machines."""

    yaml_path: ClassVar[str] = "cache.network"
    url: Text
    namespace: Text = "llamahome"
    ttl: Seconds | None = None
    secret: Text | None = Field(default=None, repr=False)
    timeout: Seconds = 0.05
    cluster: bool | None = None  # None: decided by the URL scheme (redis+cluster://)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        schemes = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        if not url.lower().startswith(schemes):
            raise ValueError(
                f"expected a Redis URL such as 'redis://localhost:6379/0' (schemes {', '.join(schemes)}), not {shown(url)}."
            )
        return url


class CacheSection(_Block):
    """``cache``: the general-purpose tiers behind ``CacheManager.get``/``set``."""

    yaml_path: ClassVar[str] = "cache"
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    disk: DiskConfig = Field(default_factory=DiskConfig)
    network: NetworkConfig | None = None

    @field_validator("memory", "disk", mode="before")
    @classmethod
    def _empty_block(cls, value: object) -> object:
        return {} if value is None else value


class ModelCacheConfig(_SizedBlock):
    """``model_cache``: model weights as safetensors, least recently used model evicted first."""

    yaml_path: ClassVar[str] = "model_cache"
    size: SizeMB = 1024.0
    format: Literal["safetensors"] = "safetensors"
    compression: Flag = True
    cleanup_policy: PolicyName = "lru"

    @field_validator("format", mode="before")
    @classmethod
    def _check_format(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "safetensors":
            return "safetensors"
        raise ValueError(
            f"unsupported format {shown(value)}; only 'safetensors' is accepted (safe to load, zero-copy). "
            "Convert other checkpoints with safetensors.torch.save_file first."
        )


class TrainingCacheConfig(_SizedBlock):
    """``training_cache``: collated batches kept for later epochs, read back with read-ahead."""

    yaml_path: ClassVar[str] = "training_cache"
    size: SizeMB = 512.0
    batch_buffer: Annotated[int, _count(1)] = 32
    prefetch: Annotated[int, _count(0)] = 4
    cleanup_policy: PolicyName = "fifo"

    @model_validator(mode="after")
    def _prefetch_fits(self) -> TrainingCacheConfig:
        if self.prefetch > self.batch_buffer:
            raise _FieldProblem(
                "prefetch",
                f"prefetch ({self.prefetch}) is larger than batch_buffer ({self.batch_buffer}); batches read ahead "
                "must fit in the buffer, so lower prefetch or raise batch_buffer.",
            )
        return self


class SystemCacheConfig(_SizedBlock):
    """``system_cache``: scratch files that vanish after ``max_age`` seconds."""

    yaml_path: ClassVar[str] = "system_cache"
    size: SizeMB = 256.0
    temp_dir: PathText = ".cache/temp"
    max_age: Seconds = 86400.0
    cleanup_policy: PolicyName = "time"


class KVCacheConfig(_SizedBlock):
    """``kv_cache``: attention keys/values of prompt prefixes, in blocks of ``block_tokens`` tokens."""

    yaml_path: ClassVar[str] = "kv_cache"
    size: SizeMB = 4096.0
    block_tokens: Annotated[int, _count(1)] = 256
    compression: Flag = True
    cleanup_policy: Literal["lru"] = "lru"

    @field_validator("block_tokens")
    @classmethod
    def _check_block_tokens(cls, value: int) -> int:
        if value > 1 << 20:
            raise ValueError(f"block_tokens must be at most {1 << 20}, not {value}; 256 suits most prompts.")
        return value

    @field_validator("cleanup_policy", mode="before")
    @classmethod
    def _check_policy(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "lru":
            return "lru"
        raise ValueError(
            f"unsupported cleanup_policy {value!r}; the KV cache evicts 'lru' only (least recently used blocks "
            "first, the last blocks of a prefix before the blocks they extend)."
        )


# ---------------------------------------------------------------------------------------------- the root
class CacheConfig(_Block):
    """The whole cache configuration: the seed's five YAML blocks, each optional.

    Build it from YAML, from a dict, or from keyword arguments; the shortcut keywords ``memory_size``,
    ``disk_size``, ``disk_path`` and ``cleanup_interval`` set the matching ``cache.memory``/``cache.disk``
    keys (and win over the same keys given in ``cache=``)::

        CacheConfig.from_yaml("cache.yaml")
        CacheConfig(memory_size=512, disk_path="/var/cache/llamahome")
        CacheConfig(cache={"memory": {"type": "lfu"}}, model_cache={"size": "4GB"})
    """

    yaml_path: ClassVar[str] = ""
    cache: CacheSection = Field(default_factory=CacheSection)
    model_cache: ModelCacheConfig = Field(default_factory=ModelCacheConfig)
    training_cache: TrainingCacheConfig = Field(default_factory=TrainingCacheConfig)
    system_cache: SystemCacheConfig = Field(default_factory=SystemCacheConfig)
    kv_cache: KVCacheConfig = Field(default_factory=KVCacheConfig)

    _SHORTCUTS: ClassVar[dict[str, tuple[str, str]]] = {
        "memory_size": ("memory", "size"),
        "disk_size": ("disk", "size"),
        "disk_path": ("disk", "path"),
        "cleanup_interval": ("disk", "cleanup_interval"),
    }

    def __init__(
        self,
        *,
        memory_size: float | str | None = None,
        disk_size: float | str | None = None,
        disk_path: str | os.PathLike[str] | None = None,
        cleanup_interval: float | str | None = None,
        **blocks: Any,
    ) -> None:
        shortcuts = {
            "memory_size": memory_size,
            "disk_size": disk_size,
            "disk_path": disk_path,
            "cleanup_interval": cleanup_interval,
        }
        if any(value is not None for value in shortcuts.values()):
            blocks["cache"] = _apply_shortcuts(blocks.get("cache"), shortcuts, self._SHORTCUTS)
        try:
            super().__init__(**blocks)
        except ValidationError as exc:
            raise _translate(exc) from exc

    @field_validator("cache", "model_cache", "training_cache", "system_cache", "kv_cache", mode="before")
    @classmethod
    def _empty_block(cls, value: object) -> object:
        # `model_cache:` with every child commented out loads as None; treat it as "all defaults".
        return {} if value is None else value

    # -- constructors ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CacheConfig:
        """Validate a mapping shaped like the YAML (``None`` or ``{}`` gives the defaults)."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"The configuration must be a mapping of blocks (cache, model_cache, training_cache, "
                f"system_cache, kv_cache), not {type(data).__name__}."
            )
        for key in data:
            if not isinstance(key, str) or key in cls._SHORTCUTS:
                # Shortcut keywords are for Python callers; the YAML spells the nested keys.
                fields = list(cls.model_fields)
                if key in cls._SHORTCUTS:
                    block, name = cls._SHORTCUTS[key]
                    hint = f" In YAML write it as cache.{block}.{name}."
                else:
                    hint = _did_you_mean(key, fields)
                raise ConfigError(f"{_key_text(key)}: unknown key.{hint} Accepted keys: {', '.join(fields)}.")
        # A custom __init__ makes pydantic route validation through it, so build through it directly.
        return cls(**data)

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> CacheConfig:
        """pydantic's entry point, with errors translated to :class:`ConfigError` like every other one."""
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise _translate(exc) from exc

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> CacheConfig:
        """Read and validate a YAML file; errors name the file, the YAML path and (for syntax) the line."""
        where = os.fspath(path)
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"{where}: no such configuration file; check the path.") from exc
        except IsADirectoryError as exc:
            raise ConfigError(
                f"{where}: is a directory, not a configuration file; give the path of a YAML file."
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: is not UTF-8 text; save the configuration as UTF-8 YAML.") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                f"{where}: cannot read the configuration file ({reason}); check its permissions."
            ) from exc
        return cls.from_yaml_text(text, source=where)

    @classmethod
    def from_yaml_text(cls, text: str, *, source: str = "<string>") -> CacheConfig:
        """Validate YAML given as a string (``source`` names it in error messages)."""
        data = _load_yaml(text, source)
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{source}: the top level must be a mapping of blocks (cache, model_cache, training_cache, "
                f"system_cache, kv_cache), not a {_yaml_type(data)}."
            )
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc.__cause__

    # -- views ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (YAML/JSON-ready); ``from_dict`` reads it back."""
        data = self.model_dump(mode="json")
        if data["cache"].get("network") is None:
            data["cache"].pop("network", None)
        return data

    def to_yaml(self) -> str:
        """The effective configuration as YAML, blocks in the seed's order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @property
    def cleanup_interval(self) -> float:
        """Seconds between cleanup passes (``cache.disk.cleanup_interval``), as the seed's CacheManager reads it."""
        return self.cache.disk.cleanup_interval

    @property
    def memory_size(self) -> float:
        """``cache.memory.size`` in MB."""
        return self.cache.memory.size

    @property
    def disk_size(self) -> float:
        """``cache.disk.size`` in MB."""
        return self.cache.disk.size

    @property
    def disk_path(self) -> str:
        """``cache.disk.path``."""
        return self.cache.disk.path


def load_config(source: CacheConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None) -> CacheConfig:
    """A ``CacheConfig`` from whatever the caller has: a config, a mapping, a YAML path, or None (defaults)."""
    if source is None:
        return CacheConfig()
    if isinstance(source, CacheConfig):
        return source
    if isinstance(source, Mapping):
        return CacheConfig.from_dict(source)
    if isinstance(source, (str, os.PathLike)):
        return CacheConfig.from_yaml(source)
    raise ConfigError(
        f"Cannot build a CacheConfig from {type(source).__name__}; pass a CacheConfig, a dict or a YAML file path."
    )


# ---------------------------------------------------------------------------------------------- helpers
def _apply_shortcuts(cache: object, values: dict[str, Any], where: dict[str, tuple[str, str]]) -> object:
    if isinstance(cache, CacheSection):
        cache = cache.model_dump()
    if cache is None:
        cache = {}
    if not isinstance(cache, Mapping):
        return cache  # let validation report the bad `cache` value
    merged: dict[str, Any] = dict(cache)
    for name, value in values.items():
        if value is None:
            continue
        block_name, key = where[name]
        block = merged.get(block_name)
        if isinstance(block, BaseModel):
            block = block.model_dump()
        block = {} if block is None else block
        if not isinstance(block, Mapping):
            continue
        merged[block_name] = {**block, key: value}
    return merged


class _YAMLDuplicateKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {shown(key)}; keep only one", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_YAMLDuplicateKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_YAMLDuplicateKeyLoader)
    except yaml.YAMLError as exc:
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        mark = getattr(exc, "problem_mark", None) or context_mark
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        if context and mark is not None and context_mark is not None and context_mark.line != mark.line:
            # An unclosed bracket is detected far below where it opened; point at the opening too.
            problem = f"{problem}, {context} that starts on line {context_mark.line + 1}"
        raise ConfigError(f"{source}{at}: malformed YAML ({_capped(problem)}); fix the syntax there.") from exc
    except ValueError as exc:
        # PyYAML builds ints with int(text): one of more than 4300 digits is refused by Python itself.
        raise ConfigError(
            f"{source}: a number in the YAML is too long to read ({_capped(str(exc))}); fix the value."
        ) from None


def _yaml_type(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last element of ``loc`` (for "did you mean" hints)."""
    model: type[BaseModel] = CacheConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _describe(error: Any, loc: tuple[Any, ...], prefix: str) -> str:
    kind = error["type"]
    if kind in ("extra_forbidden", "no_such_attribute"):
        owner = _model_at(_root_loc(prefix) + loc)
        fields = list(owner.model_fields) if owner is not None else []
        hint = _did_you_mean(loc[-1], fields) if fields else ""
        accepted = f" Accepted keys: {', '.join(fields)}." if fields else ""
        return f"unknown key.{hint}{accepted}"
    if kind == "missing":
        return "is required; add it to the block."
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        got = error.get("input")
        return f"expected a mapping of keys, not {_yaml_type(got)} {shown(got)}."
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if kind == "frozen_field":
        return "cannot be changed."
    if kind == "literal_error" and loc and loc[-1] == "format":
        return f"unsupported format {shown(error.get('input'))}; only 'safetensors' is accepted."
    msg = str(error["msg"])
    return msg if msg.endswith(".") else msg + "."


def _root_loc(prefix: str) -> tuple[str, ...]:
    return tuple(prefix.split(".")) if prefix else ()


def _translate(exc: ValidationError, prefix: str = "") -> ConfigError:
    """Turn pydantic's ValidationError into one ConfigError naming each YAML path and what is accepted."""
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, ConfigError):
            # Raised by CacheConfig.__init__ when pydantic routes model_validate through it: already phrased.
            problems.append(str(cause))
            continue
        loc = tuple(error["loc"])
        if isinstance(cause, _FieldProblem):
            loc += (cause.field,)
        path = ".".join(_key_text(p) for p in _root_loc(prefix) + loc) or "configuration"
        problem = _capped(f"{path}: {_describe(error, loc, prefix)}")
        if problem not in problems:
            problems.append(problem)
    if len(problems) == 1:
        return ConfigError(problems[0])
    listed = problems[:_MAX_PROBLEMS]
    if len(problems) > _MAX_PROBLEMS:
        listed.append(f"... and {len(problems) - _MAX_PROBLEMS} more; fix these first.")
    return ConfigError(f"{len(problems)} problems in the configuration:\n  " + "\n  ".join(listed))


#: A message quotes at most this many problems, each at most _MAX_PROBLEM_CHARS long: a config is
#: untrusted input, and a hostile one must not turn its error message into megabytes.
_MAX_PROBLEMS = 20
_MAX_PROBLEM_CHARS = 500


def _capped(text: str) -> str:
    return text if len(text) <= _MAX_PROBLEM_CHARS else text[: _MAX_PROBLEM_CHARS - 3] + "..."


def _key_text(key: object) -> str:
    """A YAML key as it appears in a message: itself when short and textual, else a cut-down repr."""
    if isinstance(key, str) and len(key) <= 100:
        return key
    if isinstance(key, int) and not isinstance(key, bool) and abs(key) < 10**30:
        return str(key)
    return shown(key)
