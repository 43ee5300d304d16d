"""CacheConfig: every key, every default, every bad input, and the size/duration parsing behind them."""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from llamahome.cache.config import POLICIES, CacheConfig, load_config
from llamahome.cache.units import parse_duration, parse_size, size_to_bytes
from llamahome.errors import CacheError, ConfigError

MIB = 1024 * 1024
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cache.yaml"

SEED_DEFAULTS = {
    "cache": {
        "memory": {"size": 1000, "type": "lru", "compression": True},
        "disk": {"size": 10000, "path": "./cache", "cleanup_interval": 3600},
    },
    "model_cache": {"size": 1024, "format": "safetensors", "compression": True, "cleanup_policy": "lru"},
    "training_cache": {"size": 512, "batch_buffer": 32, "prefetch": 4, "cleanup_policy": "fifo"},
    "system_cache": {"size": 256, "temp_dir": ".cache/temp", "max_age": 86400, "cleanup_policy": "time"},
    # Added in turn 2 (issue 14): not in the seed; its defaults are the KV cache's own.
    "kv_cache": {"size": 4096, "block_tokens": 256, "compression": True, "cleanup_policy": "lru"},
}


def config_error(match: str):
    return pytest.raises(ConfigError, match=match)


# ------------------------------------------------------------------------------------------------ defaults
def test_defaults_are_the_seeds_values() -> None:
    cfg = CacheConfig()
    assert cfg.to_dict() == SEED_DEFAULTS
    assert cfg.cache.memory.size == 1000.0 and cfg.cache.memory.type == "lru" and cfg.cache.memory.compression is True
    assert cfg.cache.disk.size == 10000.0 and cfg.cache.disk.path == "./cache"
    assert cfg.cache.disk.cleanup_interval == 3600
    assert cfg.cache.network is None
    assert (cfg.model_cache.size, cfg.model_cache.format) == (1024.0, "safetensors")
    assert (cfg.model_cache.compression, cfg.model_cache.cleanup_policy) == (True, "lru")
    assert (cfg.training_cache.size, cfg.training_cache.batch_buffer) == (512.0, 32)
    assert (cfg.training_cache.prefetch, cfg.training_cache.cleanup_policy) == (4, "fifo")
    assert (cfg.system_cache.size, cfg.system_cache.temp_dir) == (256.0, ".cache/temp")
    assert (cfg.system_cache.max_age, cfg.system_cache.cleanup_policy) == (86400, "time")


def test_size_bytes_on_every_sized_block() -> None:
    cfg = CacheConfig()
    assert cfg.cache.memory.size_bytes == 1000 * MIB
    assert cfg.cache.disk.size_bytes == 10000 * MIB
    assert cfg.model_cache.size_bytes == 1024 * MIB
    assert cfg.training_cache.size_bytes == 512 * MIB
    assert cfg.system_cache.size_bytes == 256 * MIB
    assert all(isinstance(b.size_bytes, int) for b in (cfg.cache.memory, cfg.model_cache, cfg.system_cache))


def test_example_file_is_the_seed_and_equals_the_defaults() -> None:
    cfg = CacheConfig.from_yaml(EXAMPLE)
    assert cfg == CacheConfig()
    assert cfg.to_dict() == SEED_DEFAULTS


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_yaml_gives_defaults(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text(text)
    assert CacheConfig.from_yaml(path) == CacheConfig()


def test_block_with_every_child_commented_out_means_defaults() -> None:
    text = "cache:\n  memory:\n  disk:\nmodel_cache:\ntraining_cache:\nsystem_cache:\n"
    assert CacheConfig.from_yaml_text(text) == CacheConfig()


def test_partial_block_keeps_other_defaults() -> None:
    cfg = CacheConfig.from_yaml_text("cache:\n  memory:\n    type: lfu\n")
    assert cfg.cache.memory.type == "lfu"
    assert cfg.cache.memory.size == 1000.0 and cfg.cache.memory.compression is True
    assert cfg.cache.disk == CacheConfig().cache.disk


# ------------------------------------------------------------------------------------------------ every key
EVERY_KEY = """
cache:
  memory: {size: 64, type: lfu, compression: false}
  disk: {size: 2GB, path: /var/cache/llama, cleanup_interval: 60}
  network: {url: "redis://db:6379/1", namespace: team, ttl: 30, secret: s3cret, timeout: 0.2}
model_cache: {size: 1.5GiB, format: safetensors, compression: false, cleanup_policy: fifo}
training_cache: {size: 100MB, batch_buffer: 8, prefetch: 8, cleanup_policy: lru}
system_cache: {size: 2048KB, temp_dir: /tmp/llama, max_age: 600, cleanup_policy: lfu}
"""


def test_every_key_is_read() -> None:
    cfg = CacheConfig.from_yaml_text(EVERY_KEY)
    assert (cfg.cache.memory.size, cfg.cache.memory.type, cfg.cache.memory.compression) == (64.0, "lfu", False)
    assert (cfg.cache.disk.size, cfg.cache.disk.path, cfg.cache.disk.cleanup_interval) == (
        2048.0,
        "/var/cache/llama",
        60,
    )
    net = cfg.cache.network
    assert net is not None
    assert (net.url, net.namespace, net.ttl, net.secret, net.timeout) == (
        "redis://db:6379/1",
        "team",
        30,
        "s3cret",
        0.2,
    )
    assert (cfg.model_cache.size, cfg.model_cache.compression, cfg.model_cache.cleanup_policy) == (
        1536.0,
        False,
        "fifo",
    )
    assert cfg.model_cache.size_bytes == 1536 * MIB
    assert (cfg.training_cache.size, cfg.training_cache.batch_buffer, cfg.training_cache.prefetch) == (100.0, 8, 8)
    assert cfg.training_cache.cleanup_policy == "lru"
    assert (cfg.system_cache.size, cfg.system_cache.temp_dir, cfg.system_cache.max_age) == (2.0, "/tmp/llama", 600)
    assert cfg.system_cache.cleanup_policy == "lfu"
    assert cfg.cleanup_interval == 60


def test_network_defaults_when_only_url_is_given() -> None:
    net = CacheConfig(cache={"network": {"url": "rediss://secure:6380"}}).cache.network
    assert net is not None
    assert (net.namespace, net.ttl, net.secret, net.timeout) == ("llamahome", None, None, 0.05)


def test_network_secret_is_not_in_repr() -> None:
    cfg = CacheConfig(cache={"network": {"url": "redis://x", "secret": "hunter2"}})
    assert "hunter2" not in repr(cfg)
    assert cfg.cache.network is not None and cfg.cache.network.secret == "hunter2"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "block",
    ["cache.memory.type", "model_cache.cleanup_policy", "training_cache.cleanup_policy", "system_cache.cleanup_policy"],
)
def test_every_policy_in_every_policy_key(block: str, policy: str) -> None:
    *parents, key = block.split(".")
    data: dict = {key: policy.upper()}  # case-insensitive, stored lower case
    for parent in reversed(parents):
        data = {parent: data}
    cfg = CacheConfig.from_dict(data)
    node = cfg
    for part in block.split("."):
        node = getattr(node, part)
    assert node == policy


def test_round_trip_through_dict_and_yaml() -> None:
    cfg = CacheConfig.from_yaml_text(EVERY_KEY)
    assert CacheConfig.from_dict(cfg.to_dict()) == cfg
    assert CacheConfig.from_yaml_text(cfg.to_yaml()) == cfg
    assert cfg.to_dict()["cache"]["disk"]["size"] == 2048  # integral sizes print as ints


def test_to_yaml_keeps_the_seeds_block_order() -> None:
    lines = [line for line in CacheConfig().to_yaml().splitlines() if not line.startswith(" ")]
    assert lines == ["cache:", "model_cache:", "training_cache:", "system_cache:", "kv_cache:"]


def test_fractional_size_survives_to_dict() -> None:
    assert CacheConfig(memory_size=7000.3).to_dict()["cache"]["memory"]["size"] == 7000.3


# ------------------------------------------------------------------------------------------------ shortcuts
def test_shortcut_kwargs() -> None:
    cfg = CacheConfig(memory_size=512, disk_size="4GB", disk_path=Path("/srv/cache"), cleanup_interval=90)
    assert cfg.cache.memory.size == 512.0 and cfg.memory_size == 512.0
    assert cfg.cache.disk.size == 4096.0 and cfg.disk_size == 4096.0
    assert cfg.cache.disk.path == "/srv/cache" and cfg.disk_path == "/srv/cache"
    assert cfg.cleanup_interval == 90 and cfg.cache.disk.cleanup_interval == 90
    assert cfg.cache.memory.type == "lru"  # untouched keys keep the defaults


def test_seed_resource_manager_snippet_float_megabytes() -> None:
    cache_size = 23334.33 * 0.3  # what get_available_memory() * 0.3 gives
    cfg = CacheConfig(memory_size=cache_size)
    assert math.isclose(cfg.cache.memory.size, 7000.299)
    assert cfg.cache.memory.size_bytes == int(7000.299 * MIB)


def test_shortcuts_override_the_same_key_in_blocks_and_merge_with_the_rest() -> None:
    cfg = CacheConfig(memory_size=5, cache={"memory": {"size": 100, "type": "fifo"}, "disk": {"path": "d"}})
    assert (cfg.cache.memory.size, cfg.cache.memory.type, cfg.cache.disk.path) == (5.0, "fifo", "d")


def test_nested_blocks_as_kwargs_and_as_models() -> None:
    base = CacheConfig(model_cache={"size": "4GB"})
    assert base.model_cache.size == 4096.0
    again = CacheConfig(cache=base.cache, model_cache=base.model_cache, memory_size=7)
    assert again.model_cache.size == 4096.0 and again.cache.memory.size == 7.0


def test_shortcut_errors_name_the_yaml_path() -> None:
    with config_error(r"^cache\.memory\.size: cannot read 'big' as a size"):
        CacheConfig(memory_size="big")
    with config_error(r"^cache\.disk\.cleanup_interval: must be larger than zero"):
        CacheConfig(cleanup_interval=0)


def test_shortcut_names_are_not_yaml_keys() -> None:
    with config_error(r"^memory_size: unknown key\. In YAML write it as cache\.memory\.size\."):
        CacheConfig.from_dict({"memory_size": 5})


def test_cleanup_interval_property_is_what_the_seeds_manager_reads() -> None:
    assert CacheConfig().cleanup_interval == 3600
    assert CacheConfig.from_yaml_text("cache: {disk: {cleanup_interval: 15m}}").cleanup_interval == 900


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize(
    ("given", "megabytes"),
    [
        (1000, 1000.0),
        (0.5, 0.5),
        ("512", 512.0),
        ("512KB", 0.5),
        ("512kb", 0.5),
        ("512 KiB", 0.5),
        ("100MB", 100.0),
        ("100mib", 100.0),
        ("100M", 100.0),
        ("4GB", 4096.0),
        ("4g", 4096.0),
        ("1.5GiB", 1536.0),
        ("1TB", 1024.0 * 1024),
        ("2TiB", 2 * 1024.0 * 1024),
        ("2048B", 2048 / MIB),
        ("1_024MB", 1024.0),
        ("1,024MB", 1024.0),
        (" 8 GB ", 8192.0),
        ("1e3", 1000.0),
        (".5GB", 512.0),
    ],
)
def test_size_forms(given: object, megabytes: float) -> None:
    assert parse_size(given) == pytest.approx(megabytes)
    assert CacheConfig(memory_size=given).cache.memory.size == pytest.approx(megabytes)  # type: ignore[arg-type]


def test_size_bytes_rounds_and_is_at_least_one() -> None:
    assert size_to_bytes("2048B") == 2048
    assert size_to_bytes("1B") == 1
    assert CacheConfig(memory_size="1.5KB").cache.memory.size_bytes == 1536


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("big", r"cannot read 'big' as a size; use a number of megabytes"),
        ("", r"cannot read '' as a size"),
        ("ten MB", r"cannot read 'ten MB' as a size"),
        ("5 parsecs", r"unknown size unit 'parsecs'"),
        ("12PB", r"unknown size unit 'PB'.*use one of B, KB, MB, GB, TB"),
        (0, r"a size must be larger than zero, not 0"),
        (-1, r"larger than zero, not -1"),
        ("-5MB", r"larger than zero, not '-5MB'"),
        ("0GB", r"larger than zero"),
        (float("nan"), r"finite"),
        (float("inf"), r"finite"),
        (True, r"not the boolean true"),
        (False, r"not the boolean false"),
        ([1], r"expected a size, not list"),
        (None, r"expected a size, not NoneType"),
    ],
)
def test_bad_sizes(given: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(given)
    with config_error(r"^cache\.memory\.size: .*" + message):
        CacheConfig.from_dict({"cache": {"memory": {"size": given}}})


@pytest.mark.parametrize("block", ["cache.disk", "model_cache", "training_cache", "system_cache"])
def test_every_size_key_is_checked(block: str) -> None:
    parts = block.split(".")
    data: dict = {"size": "lots"}
    for parent in reversed(parts):
        data = {parent: data}
    with config_error("^" + re.escape(block) + r"\.size: cannot read 'lots' as a size"):
        CacheConfig.from_dict(data)


# ------------------------------------------------------------------------------------------------ bad input
BAD = [
    # (data, exact leading path, fragment of what is accepted)
    (
        {"cache": {"memory": {"type": "lruu"}}},
        "cache.memory.type",
        r"unknown policy 'lruu'; use one of lru, lfu, fifo, time\. Did you mean 'lru'\?",
    ),
    (
        {"cache": {"memory": {"type": "random"}}},
        "cache.memory.type",
        r"unknown policy 'random'; use one of lru, lfu, fifo, time\.$",
    ),
    ({"cache": {"memory": {"type": 3}}}, "cache.memory.type", r"unknown policy 3 \(int\)"),
    ({"model_cache": {"cleanup_policy": "mru"}}, "model_cache.cleanup_policy", r"unknown policy 'mru'"),
    (
        {"training_cache": {"cleanup_policy": "lifo"}},
        "training_cache.cleanup_policy",
        r"unknown policy 'lifo'.*Did you mean 'fifo'",
    ),
    ({"system_cache": {"cleanup_policy": "age"}}, "system_cache.cleanup_policy", r"use one of lru, lfu, fifo, time"),
    (
        {"cache": {"memory": {"sizee": 5}}},
        "cache.memory.sizee",
        r"unknown key\. Did you mean 'size'\? Accepted keys: size, type, compression\.",
    ),
    (
        {"cache": {"disk": {"cleanup_intervall": 5}}},
        "cache.disk.cleanup_intervall",
        r"Did you mean 'cleanup_interval'\?",
    ),
    ({"cache": {"memroy": {}}}, "cache.memroy", r"Did you mean 'memory'\? Accepted keys: memory, disk, network\."),
    ({"modelcache": {}}, "modelcache", r"Did you mean 'model_cache'\?"),
    (
        {"training_cache": {"zzz": 1}},
        "training_cache.zzz",
        r"unknown key\. Accepted keys: size, batch_buffer, prefetch, cleanup_policy\.$",
    ),
    ({"system_cache": {"maxage": 1}}, "system_cache.maxage", r"Did you mean 'max_age'\?"),
    ({"cache": {"network": {"url": "redis://x", "tll": 1}}}, "cache.network.tll", r"Did you mean 'ttl'\?"),
    (
        {"model_cache": {"format": "pickle"}},
        "model_cache.format",
        r"unsupported format 'pickle'; only 'safetensors' is accepted",
    ),
    ({"model_cache": {"format": "gguf"}}, "model_cache.format", r"only 'safetensors'"),
    ({"model_cache": {"format": 1}}, "model_cache.format", r"unsupported format 1"),
    (
        {"cache": {"disk": {"cleanup_interval": 0}}},
        "cache.disk.cleanup_interval",
        r"must be larger than zero seconds, not 0",
    ),
    ({"cache": {"disk": {"cleanup_interval": -60}}}, "cache.disk.cleanup_interval", r"larger than zero"),
    ({"cache": {"disk": {"cleanup_interval": True}}}, "cache.disk.cleanup_interval", r"not the boolean true"),
    (
        {"cache": {"disk": {"cleanup_interval": "often"}}},
        "cache.disk.cleanup_interval",
        r"cannot read 'often' as a duration",
    ),
    ({"system_cache": {"max_age": 0}}, "system_cache.max_age", r"larger than zero"),
    ({"system_cache": {"max_age": -1}}, "system_cache.max_age", r"larger than zero"),
    ({"system_cache": {"max_age": False}}, "system_cache.max_age", r"boolean false"),
    ({"training_cache": {"batch_buffer": 0}}, "training_cache.batch_buffer", r"must be at least 1, not 0"),
    (
        {"training_cache": {"batch_buffer": 2.5}},
        "training_cache.batch_buffer",
        r"expected a whole number >= 1, not 2\.5",
    ),
    (
        {"training_cache": {"batch_buffer": True}},
        "training_cache.batch_buffer",
        r"expected a whole number >= 1, not True",
    ),
    ({"training_cache": {"batch_buffer": "32"}}, "training_cache.batch_buffer", r"expected a whole number"),
    ({"training_cache": {"prefetch": -1}}, "training_cache.prefetch", r"must be at least 0, not -1"),
    ({"training_cache": {"prefetch": False}}, "training_cache.prefetch", r"whole number >= 0, not False"),
    (
        {"training_cache": {"prefetch": 33}},
        "training_cache.prefetch",
        r"prefetch \(33\) is larger than batch_buffer \(32\).*lower prefetch or raise batch_buffer",
    ),
    (
        {"training_cache": {"batch_buffer": 2, "prefetch": 3}},
        "training_cache.prefetch",
        r"larger than batch_buffer \(2\)",
    ),
    ({"cache": {"memory": {"compression": "yes"}}}, "cache.memory.compression", r"expected true or false, not 'yes'"),
    ({"model_cache": {"compression": 1}}, "model_cache.compression", r"expected true or false, not 1"),
    ({"cache": {"disk": {"path": ""}}}, "cache.disk.path", r"expected a directory path"),
    ({"cache": {"disk": {"path": 5}}}, "cache.disk.path", r"expected a directory path"),
    ({"system_cache": {"temp_dir": None}}, "system_cache.temp_dir", r"expected a directory path"),
    ({"cache": {"network": {}}}, "cache.network.url", r"is required"),
    (
        {"cache": {"network": {"url": "http://x"}}},
        "cache.network.url",
        r"expected a Redis URL such as 'redis://localhost:6379/0'",
    ),
    ({"cache": {"network": {"url": "redis://x", "namespace": ""}}}, "cache.network.namespace", r"non-empty string"),
    ({"cache": {"network": {"url": "redis://x", "ttl": 0}}}, "cache.network.ttl", r"larger than zero"),
    ({"cache": {"network": {"url": "redis://x", "timeout": -1}}}, "cache.network.timeout", r"larger than zero"),
    ({"cache": {"network": {"url": "redis://x", "secret": 5}}}, "cache.network.secret", r"non-empty string"),
    ({"cache": {"network": "redis://x"}}, "cache.network", r"expected a mapping of keys, not string"),
    ({"cache": [1, 2]}, "cache", r"expected a mapping of keys, not list"),
    ({"cache": {"memory": 5}}, "cache.memory", r"expected a mapping of keys, not number 5"),
    ({"model_cache": "big"}, "model_cache", r"expected a mapping of keys"),
]


@pytest.mark.parametrize(("data", "path", "message"), BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_path_and_what_is_accepted(data: dict, path: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(path) + ": .*" + message) as info:
        CacheConfig.from_dict(data)
    assert isinstance(info.value.__cause__, ValidationError) or info.value.__cause__ is None
    assert "\n" not in str(info.value)  # one problem, one line
    # the same problem through the keyword API
    with pytest.raises(ConfigError, match="^" + re.escape(path) + ": "):
        CacheConfig(**data)


def test_config_error_is_a_cache_error_and_chains_pydantics() -> None:
    with pytest.raises(CacheError) as info:
        CacheConfig(cache={"memory": {"type": "x"}})
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    assert isinstance(info.value.__cause__, ValidationError)


def test_several_problems_are_all_listed() -> None:
    with pytest.raises(ConfigError) as info:
        CacheConfig.from_dict({"cache": {"memory": {"type": "x", "size": 0}}, "system_cache": {"max_age": 0}})
    lines = str(info.value).splitlines()
    assert lines[0] == "3 problems in the configuration:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "cache.memory.size",
        "cache.memory.type",
        "system_cache.max_age",
    ]


def test_model_validate_raises_config_error_too() -> None:
    with config_error(r"^cache\.memory\.type: unknown policy 'x'"):
        CacheConfig.model_validate({"cache": {"memory": {"type": "x"}}})
    with config_error(r"expected a mapping"):
        CacheConfig.model_validate(5)


def test_from_dict_refuses_non_mappings_and_non_string_keys() -> None:
    with config_error(r"must be a mapping of blocks .* not list"):
        CacheConfig.from_dict([("cache", {})])  # type: ignore[arg-type]
    with config_error(r"^1: unknown key"):
        CacheConfig.from_dict({1: {}})  # type: ignore[dict-item]
    assert CacheConfig.from_dict(None) == CacheConfig()


# ------------------------------------------------------------------------------------------------ YAML files
def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text("cache:\n  memory:\n    size: 100\n    type: [lru\n")
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(path))}, line 5, column 1: malformed YAML \(.*\); fix the syntax there\.$"
    ) as info:
        CacheConfig.from_yaml(path)
    assert info.value.__cause__ is not None


def test_bad_indentation_reports_its_line() -> None:
    with config_error(r"^<string>, line 4, column 4: malformed YAML \(expected <block end>"):
        CacheConfig.from_yaml_text("cache:\n  memory:\n    size: 1\n   type: lru\n")


def test_tab_indentation_is_malformed() -> None:
    with config_error(r"line 2, column 1: malformed YAML"):
        CacheConfig.from_yaml_text("cache:\n\tmemory: {}\n")


def test_duplicate_keys_are_refused_with_their_line() -> None:
    with config_error(r"line 4, column 3: malformed YAML \(duplicate key 'memory'; keep only one\)"):
        CacheConfig.from_yaml_text("cache:\n  memory:\n    size: 1\n  memory:\n    size: 2\n")


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just words\n", "string"), ("42\n", "number")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with config_error(
        rf"^{re.escape(str(path))}: the top level must be a mapping of blocks \(cache, model_cache, training_cache, system_cache, kv_cache\), not a {kind}\.$"
    ):
        CacheConfig.from_yaml(path)


def test_validation_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cache:\n  memory:\n    type: lruu\n")
    with config_error(
        rf"^{re.escape(str(path))}: cache\.memory\.type: unknown policy 'lruu'; use one of lru, lfu, fifo, time\."
    ):
        CacheConfig.from_yaml(path)


def test_yaml_booleans_where_numbers_belong() -> None:
    with config_error(r"^<string>: cache\.memory\.size: expected a size, not the boolean true"):
        CacheConfig.from_yaml_text("cache:\n  memory:\n    size: yes\n")


def test_missing_file(tmp_path: Path) -> None:
    with config_error(rf"^{re.escape(str(tmp_path / 'nope.yaml'))}: no such configuration file; check the path\.$"):
        CacheConfig.from_yaml(tmp_path / "nope.yaml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with config_error(r"is a directory, not a configuration file"):
        CacheConfig.from_yaml(tmp_path)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("cache: {}\n")
    path.chmod(0)
    with config_error(r"cannot read the configuration file \(Permission denied\); check its permissions"):
        CacheConfig.from_yaml(path)


def test_path_through_a_file_is_unreadable(tmp_path: Path) -> None:
    # Root reads any file, so EACCES cannot be shown everywhere; ENOTDIR takes the same OSError branch.
    (tmp_path / "file").write_text("")
    with config_error(r"cannot read the configuration file \(Not a directory\); check its permissions"):
        CacheConfig.from_yaml(tmp_path / "file" / "cache.yaml")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with config_error(r"is not UTF-8 text"):
        CacheConfig.from_yaml(path)


def test_unknown_yaml_tags_are_refused_not_executed() -> None:
    with config_error(r"malformed YAML"):
        CacheConfig.from_yaml_text("cache: !!python/object/apply:os.system ['echo pwned']\n")


# ------------------------------------------------------------------------------------------------ assignment
def test_assignment_is_validated_and_converted() -> None:
    cfg = CacheConfig()
    cfg.cache.memory.size = "2GB"  # type: ignore[assignment]
    assert cfg.cache.memory.size == 2048.0
    cfg.cache.memory.type = "LFU"  # type: ignore[assignment]
    assert cfg.cache.memory.type == "lfu"


def test_bad_assignment_raises_config_error_and_keeps_the_old_value() -> None:
    cfg = CacheConfig()
    with config_error(r"^cache\.memory\.type: unknown policy 'foo'"):
        cfg.cache.memory.type = "foo"  # type: ignore[assignment]
    with config_error(r"^training_cache\.prefetch: prefetch \(100\) is larger than batch_buffer"):
        cfg.training_cache.prefetch = 100
    with config_error(r"^cache\.memory\.type: unknown policy"):
        cfg.cache.memory = {"type": "foo"}  # type: ignore[assignment]
    with config_error(r"^system_cache\.nope: unknown key"):
        cfg.system_cache.nope = 1  # type: ignore[attr-defined]
    assert cfg == CacheConfig()


# ------------------------------------------------------------------------------------------------ load_config
def test_load_config_accepts_what_callers_have(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cache: {memory: {size: 7}}\n")
    cfg = CacheConfig(memory_size=3)
    assert load_config(None) == CacheConfig()
    assert load_config(cfg) is cfg
    assert load_config({"cache": {"memory": {"size": 5}}}).cache.memory.size == 5.0
    assert load_config(path).cache.memory.size == 7.0
    assert load_config(str(path)).cache.memory.size == 7.0
    with config_error(r"Cannot build a CacheConfig from int"):
        load_config(5)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ odds and ends
def test_home_directory_paths_are_expanded_and_relative_paths_kept() -> None:
    cfg = CacheConfig(disk_path="~/llama-cache", system_cache={"temp_dir": "~/tmp"})
    assert cfg.cache.disk.path == os.path.join(os.path.expanduser("~"), "llama-cache")
    assert cfg.system_cache.temp_dir == os.path.join(os.path.expanduser("~"), "tmp")
    assert CacheConfig(disk_path="rel/dir").cache.disk.path == "rel/dir"


def test_config_pickles_for_worker_processes() -> None:
    import pickle

    cfg = CacheConfig.from_yaml_text(EVERY_KEY)
    clone = pickle.loads(pickle.dumps(cfg))
    assert clone == cfg and clone.cache.network is not None and clone.cache.network.secret == "s3cret"


def test_json_schema_is_available_for_editors() -> None:
    schema = CacheConfig.model_json_schema()
    assert set(schema["properties"]) == {"cache", "model_cache", "training_cache", "system_cache", "kv_cache"}


def test_key_case_matters_and_the_hint_finds_the_lower_case_key() -> None:
    with config_error(r"^cache\.Memory: unknown key\. Did you mean 'memory'\?"):
        CacheConfig(cache={"Memory": {}})


def test_docstring_examples_run() -> None:
    import doctest

    import llamahome.cache.config as config_module

    result = doctest.testmod(config_module)  # units.py's examples: test_units.py
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------- absurd and hostile values
@pytest.mark.parametrize("given", [1e300, 10**5000, "1e300", "2000000TB", 2.0**41], ids=["1e300", "10**5000", "str", "TB", "2**41"])
def test_sizes_beyond_one_exbibyte_are_refused(given: object) -> None:
    with pytest.raises(ConfigError, match=r"a size must be at most 1,099,511,627,776 MB \(1 EiB\)"):
        parse_size(given)
    with config_error(r"^cache\.memory\.size: a size must be at most"):
        CacheConfig(memory_size=given)  # type: ignore[arg-type]
    assert parse_size(2**40) == 2.0**40  # the bound itself is accepted


@pytest.mark.parametrize("given", [10**400, 1e300, "99999999999h"], ids=["10**400", "1e300", "hours"])
def test_durations_beyond_a_thousand_years_are_refused(given: object) -> None:
    with pytest.raises(ConfigError, match=r"a duration must be at most .* \(1000 years\)"):
        parse_duration(given)
    with config_error(r"^cache\.network\.ttl: a duration must be at most"):
        CacheConfig(cache={"network": {"url": "redis://localhost:6379/0", "ttl": given}})


def test_errors_quote_huge_values_briefly() -> None:
    huge_int, huge_text = 10**5000, "9" * 1_000_000
    for value in (huge_int, -huge_int):
        with pytest.raises(ConfigError) as info:
            parse_size(value)
        assert "an integer of about 5001 digits" in str(info.value) and len(str(info.value)) < 200
    with pytest.raises(ConfigError) as info:
        CacheConfig.from_dict({"cache": {"memory": {"type": huge_text, "size": huge_text, "compression": huge_text}}})
    assert "3 problems" in str(info.value) and len(str(info.value)) < 1500
    nested: list = ["x"]
    for _ in range(30):
        nested = [nested] * 9  # shared references: tiny in memory, gigabytes when printed in full
    with pytest.raises(ConfigError) as info:
        CacheConfig.from_dict({"cache": {"network": {"url": nested}}})
    assert len(str(info.value)) < 300
    with pytest.raises(ConfigError) as info:
        CacheConfig.from_dict({"x" * 1_000_000: 1})
    assert len(str(info.value)) < 300


def test_many_problems_are_listed_up_to_a_limit() -> None:
    data = {"cache": {"memory": {f"bad{i}": 1 for i in range(50)}}}
    with pytest.raises(ConfigError) as info:
        CacheConfig.from_dict(data)
    lines = str(info.value).splitlines()
    assert lines[0] == "50 problems in the configuration:"
    assert len(lines) == 22 and lines[-1] == "  ... and 30 more; fix these first."


def test_a_nul_in_a_path_is_refused_at_validation() -> None:
    with config_error(r"^cache\.disk\.path: a path cannot contain a NUL"):
        CacheConfig(disk_path="ca\0che")
    with config_error(r"^system_cache\.temp_dir: a path cannot contain a NUL"):
        CacheConfig(system_cache={"temp_dir": "tmp\0"})


def test_a_yaml_number_too_long_for_python_is_a_config_error() -> None:
    with config_error(r"^<string>: a number in the YAML is too long to read"):
        CacheConfig.from_yaml_text("cache:\n  memory:\n    size: " + "1" * 5000 + "\n")
