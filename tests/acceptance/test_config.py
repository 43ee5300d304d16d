"""Acceptance: the configuration contract, from the outside.

``CacheConfig`` reads the seed's YAML (five blocks, every block and key optional, the seed's values as
defaults), takes sizes as MiB numbers or unit strings and the shortcut kwargs ``memory_size``,
``disk_size``, ``disk_path``, ``cleanup_interval``, and answers bad input with a ``ConfigError`` that names
the YAML path (README "Configuration"; issue 2). The validator's every message is pinned in
``tests/cache/test_config.py``; this file checks the contract a user relies on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llamahome.cache import CacheConfig
from llamahome.errors import CacheError, ConfigError

from ._support import KiB, MiB

SEED_YAML = """\
cache:
  memory:
    size: 1000  # MB
    type: "lru"
    compression: true
  disk:
    size: 10000  # MB
    path: "./cache"
    cleanup_interval: 3600  # seconds
model_cache:
  size: 1024  # MB
  format: "safetensors"
  compression: true
  cleanup_policy: "lru"
training_cache:
  size: 512  # MB
  batch_buffer: 32
  prefetch: 4
  cleanup_policy: "fifo"
system_cache:
  size: 256  # MB
  temp_dir: ".cache/temp"
  max_age: 86400  # seconds
  cleanup_policy: "time"
"""


def assert_seed_values(cfg: CacheConfig) -> None:
    assert cfg.cache.memory.size == 1000
    assert cfg.cache.memory.type == "lru"
    assert cfg.cache.memory.compression is True
    assert cfg.cache.disk.size == 10000
    assert Path(cfg.cache.disk.path) == Path("./cache")
    assert cfg.cache.disk.cleanup_interval == 3600
    assert cfg.cleanup_interval == 3600
    assert cfg.model_cache.size == 1024
    assert cfg.model_cache.format == "safetensors"
    assert cfg.model_cache.compression is True
    assert cfg.model_cache.cleanup_policy == "lru"
    assert cfg.training_cache.size == 512
    assert cfg.training_cache.batch_buffer == 32
    assert cfg.training_cache.prefetch == 4
    assert cfg.training_cache.cleanup_policy == "fifo"
    assert cfg.system_cache.size == 256
    assert Path(cfg.system_cache.temp_dir) == Path(".cache/temp")
    assert cfg.system_cache.max_age == 86400
    assert cfg.system_cache.cleanup_policy == "time"


def test_config_defaults_are_the_seeds_values() -> None:
    assert_seed_values(CacheConfig())


def test_config_from_yaml_reads_the_seeds_five_blocks_in_one_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")
    assert_seed_values(CacheConfig.from_yaml(path))
    assert_seed_values(CacheConfig.from_yaml(str(path)))
    assert_seed_values(CacheConfig.from_dict(yaml.safe_load(SEED_YAML)))


def test_config_every_block_and_key_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text("cache:\n  memory:\n    size: 64\ntraining_cache:\n  prefetch: 8\n", encoding="utf-8")
    cfg = CacheConfig.from_yaml(path)
    assert cfg.cache.memory.size == 64
    assert cfg.training_cache.prefetch == 8
    # Everything else keeps the seed's value.
    assert cfg.cache.memory.type == "lru" and cfg.cache.disk.size == 10000 and cfg.cleanup_interval == 3600
    assert cfg.training_cache.batch_buffer == 32 and cfg.system_cache.max_age == 86400
    assert CacheConfig.from_dict({}).cache.memory.size == 1000
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert CacheConfig.from_yaml(empty).model_cache.size == 1024


@pytest.mark.parametrize(
    ("given", "megabytes", "nbytes"),
    [
        (512, 512, 512 * MiB),
        (0.5, 0.5, 512 * KiB),
        ("512KB", 0.5, 512 * KiB),
        ("4GB", 4096, 4096 * MiB),
        ("1.5GiB", 1536, 1536 * MiB),
        ("64MB", 64, 64 * MiB),
    ],
)
def test_config_sizes_are_mib_numbers_or_unit_strings(given: Any, megabytes: float, nbytes: int) -> None:
    cfg = CacheConfig.from_dict(
        {
            "cache": {"memory": {"size": given}, "disk": {"size": given}},
            "model_cache": {"size": given},
            "training_cache": {"size": given},
            "system_cache": {"size": given},
        }
    )
    for block in (cfg.cache.memory, cfg.cache.disk, cfg.model_cache, cfg.training_cache, cfg.system_cache):
        assert block.size == pytest.approx(megabytes)
        assert block.size_bytes == nbytes


def test_config_shortcut_kwargs() -> None:
    cfg = CacheConfig(memory_size=512, disk_size="2GB", disk_path="/tmp/somewhere", cleanup_interval=60)
    assert cfg.cache.memory.size == 512
    assert cfg.cache.memory.size_bytes == 512 * MiB
    assert cfg.cache.disk.size == 2048
    assert Path(cfg.cache.disk.path) == Path("/tmp/somewhere")
    assert cfg.cleanup_interval == 60 == cfg.cache.disk.cleanup_interval
    # The seed's ResourceManager line passes a float of megabytes.
    assert CacheConfig(memory_size=1234.5 * 0.3).cache.memory.size == pytest.approx(370.35)


@pytest.mark.parametrize(
    ("data", "must_mention"),
    [
        ({"cache": {"memory": {"type": "random"}}}, "cache.memory.type"),
        ({"cache": {"memory": {"size": 0}}}, "cache.memory.size"),
        ({"cache": {"disk": {"size": -5}}}, "cache.disk.size"),
        ({"cache": {"memory": {"size": "lots"}}}, "cache.memory.size"),
        ({"model_cache": {"format": "pickle"}}, "model_cache.format"),
        ({"cache": {"disk": {"cleanup_interval": 0}}}, "cleanup_interval"),
        ({"training_cache": {"cleanup_policy": "newest"}}, "training_cache.cleanup_policy"),
    ],
)
def test_config_bad_input_is_a_config_error_naming_the_yaml_path(data: dict[str, Any], must_mention: str) -> None:
    with pytest.raises(ConfigError) as info:
        CacheConfig.from_dict(data)
    assert isinstance(info.value, CacheError)
    assert must_mention in str(info.value)


def test_config_unknown_key_gets_a_did_you_mean_hint() -> None:
    with pytest.raises(ConfigError, match=r"(?i)did you mean.*size"):
        CacheConfig.from_dict({"cache": {"memory": {"sise": 10}}})


def test_config_malformed_yaml_names_its_line_and_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cache:\n  memory:\n    size: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line"):
        CacheConfig.from_yaml(bad)
    with pytest.raises(ConfigError):
        CacheConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError):
        CacheConfig(cleanup_interval=0)


def test_config_more_bad_input_and_unit_spellings() -> None:
    with pytest.raises(ConfigError, match="(?i)did you mean 'cache'"):
        CacheConfig.from_dict({"cahce": {}})
    with pytest.raises(ConfigError):
        CacheConfig.from_dict(["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cache.memory.compression"):
        CacheConfig.from_dict({"cache": {"memory": {"compression": "maybe"}}})
    with pytest.raises(ConfigError, match="system_cache.max_age"):
        CacheConfig.from_dict({"system_cache": {"max_age": -1}})
    assert CacheConfig.from_dict({"cache": {"memory": {"size": "100MiB"}}}).cache.memory.size_bytes == 100 * MiB
    assert CacheConfig.from_dict({"cache": {"memory": {"size": "1GiB"}}}).cache.memory.size == 1024
    assert CacheConfig(disk_size="1.5GiB").cache.disk.size_bytes == 1536 * MiB
