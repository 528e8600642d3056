"""Every example in the package's docstrings runs and prints what it says (doctest), with
the installed package and binary. eoi.torch's need PyTorch: python/tests_torch runs them."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["eoi", "eoi._run", "eoi._artifact", "eoi._toml", "eoi._binary", "eoi.flax", "eoi.optax"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (above)"


def test_every_public_function_and_class_has_an_example_or_is_a_data_type() -> None:
    import eoi
    import eoi.flax
    import eoi.optax

    without = []
    for module in (eoi, eoi.flax, eoi.optax):
        for name in module.__all__:
            item = getattr(module, name)
            if callable(item) and getattr(item, "__module__", "").startswith("eoi") and ">>>" not in (item.__doc__ or ""):
                without.append(f"{module.__name__}.{name}")
    # Data types documented by their fields, not by an example of their own.
    assert sorted(without) == ["eoi.Parameter"], without
