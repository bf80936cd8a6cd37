"""Finding data files shipped inside optional packages, without importing those packages.

Importing scikit-learn's datasets module costs over a second; reading the one small file we need
costs milliseconds. So we locate the package directory with `importlib.util.find_spec` (which does
not execute the package) and read the file ourselves.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import TicketlabError

INSTALL_HINT = "install it with pip install 'ticketlab[data]'"
PIP_NAMES = {"sklearn": "scikit-learn"}  # import name -> the name users install


def missing_package(package: str, dataset: str) -> TicketlabError:
    """The one-sentence error for a dataset whose optional package is not installed."""
    package = PIP_NAMES.get(package, package)
    return TicketlabError(f"Dataset '{dataset}' needs the {package} package, which is not installed; "
                          f"{INSTALL_HINT}.")


def package_dir(package: str, dataset: str) -> Path:
    """The installed directory of top-level ``package``; raises `TicketlabError` if it is missing."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise missing_package(package, dataset)
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, relative: str, dataset: str) -> Path | None:
    """``package``'s directory joined with ``relative`` if that file exists, else ``None``."""
    path = package_dir(package, dataset) / relative
    return path if path.is_file() else None
