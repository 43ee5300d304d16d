"""The public contract: the import paths the README uses, exported names, the error tree, py.typed."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import llamahome
from llamahome import errors


@pytest.mark.parametrize("name", importlib.import_module("llamahome.cache").__all__)
def test_every_exported_cache_name_resolves(name: str) -> None:
    cache = importlib.import_module("llamahome.cache")
    assert getattr(cache, name) is not None


def test_contract_imports() -> None:
    from llamahome.cache import (  # noqa: F401
        AsyncScheduler,
        CacheConfig,
        CacheManager,
        DiskCache,
        MemoryCache,
        ModelCache,
        SystemCache,
        TieredCache,
        TrainingCache,
    )
    from llamahome.errors import CacheError, ConfigError  # noqa: F401
    from llamahome.monitoring import CacheMetricsCollector, CacheMonitor  # noqa: F401
    from llamahome.resources import ResourceManager  # noqa: F401


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        importlib.import_module("llamahome.cache").NoSuchThing  # noqa: B018


def test_every_error_derives_from_cache_error_and_is_drawn_in_the_docstring() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.CacheError)
        assert name in (errors.__doc__ or "")


def test_public_errors_are_exceptions_users_can_catch_by_builtin_kind() -> None:
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.CacheKeyError, TypeError)
    assert issubclass(errors.DiskFullError, errors.StorageError)


def test_package_ships_py_typed() -> None:
    assert (Path(inspect.getfile(llamahome)).parent / "py.typed").exists()
