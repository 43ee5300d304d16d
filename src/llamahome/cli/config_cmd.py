"""``llamahome cache config [FILE]``: validate a configuration and print the effective one as YAML."""

from __future__ import annotations

import json

import click

from llamahome.cache.config import CacheConfig

__all__ = ["config", "effective_config"]


def effective_config(cfg: CacheConfig) -> dict[str, object]:
    """``cfg.to_dict()`` with the Redis secret masked, for printing."""
    data = cfg.to_dict()
    network = data["cache"].get("network")
    if isinstance(network, dict) and network.get("secret") is not None:
        network["secret"] = "********"
    return data


@click.command(short_help="Validate a YAML file; print the effective configuration.")
@click.argument("file", required=False, type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def config(file: str | None, as_json: bool) -> None:
    """Validate FILE and print the effective configuration (every key, defaults filled in).

    Without FILE, print the defaults: a complete starting point for your own cache.yaml.
    """
    import yaml

    cfg = CacheConfig.from_yaml(file) if file is not None else CacheConfig()
    data = effective_config(cfg)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    source = f"{file} (valid)" if file is not None else "defaults"
    click.echo(f"# LlamaHome cache: effective configuration from {source}; sizes in MB (1 MB = 1 MiB)")
    click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)
