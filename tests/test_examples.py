"""Every script in examples/ runs as written (``python examples/NAME.py``) from an empty directory, exits 0,
and leaves nothing behind (issue 17). One script per component; the Redis one runs against a throwaway
redis-server and is skipped, with one reason, where redis-server is not installed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: One example per component, and the seed's snippets.
EXPECTED = {
    "tiers.py": "memory, disk and tiered caches",
    "model_cache.py": "model weights",
    "training_cache.py": "training batches",
    "system_cache.py": "scratch files",
    "manager_monitoring.py": "the manager and monitoring",
    "redis_tier.py": "the Redis tier",
    "seed_snippets.py": "the seed's snippets",
}
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
NEEDS_REDIS = {"redis_tier.py"}


def test_every_component_has_an_example_with_a_docstring_that_says_how_to_run_it() -> None:
    assert set(SCRIPTS) >= set(EXPECTED), sorted(set(EXPECTED) - set(SCRIPTS))
    for name in SCRIPTS:
        doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text(encoding="utf-8")))
        assert doc and f"python examples/{name}" in doc, f"{name}: the docstring should say how to run it"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.redis) if n in NEEDS_REDIS else n for n in SCRIPTS])
def test_example_runs_and_leaves_nothing_behind(name: str, run_script, request: pytest.FixtureRequest) -> None:
    env = {"REDIS_URL": request.getfixturevalue("scratch_redis_url")} if name in NEEDS_REDIS else {}
    result = run_script(EXAMPLES / name, env=env)
    assert result.returncode == 0, f"examples/{name} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"examples/{name} printed nothing"
    assert result.leftovers() == [], f"examples/{name} left {result.leftovers()} behind"
