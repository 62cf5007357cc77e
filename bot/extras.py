"""Which optional install (pip extra) a config needs, and whether it is there.

The runtime install (``pip install aegis-dr``, ``./scripts/run``) leaves out the heavy stacks that
only some configs use: Milvus (pymilvus, Milvus Lite, numpy), the Neo4j driver, boto3 (S3) and the
Azure Blob client. A config that names such a component or storage target is refused by
``aegis config check`` and ``aegis serve`` with one line naming the extra to install, instead of an
ImportError at the first backup at 3 a.m. Presence is looked up with ``importlib.util.find_spec``:
nothing is imported, so the check costs milliseconds.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.config import Config

DISTRIBUTION = "aegis-dr"
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")  # else a Milvus Lite file


@dataclass(frozen=True)
class Need:
    """A config key that needs the modules of one extra."""

    key: str                    # where the config asks for it: `components.neo4j`, `storage[1]` (s3)
    extra: str                  # milvus, neo4j, s3, azure
    modules: tuple[str, ...]    # import names that must be present


def needs(config: Config) -> list[Need]:
    """The optional stacks this config uses, in file order."""
    found: list[Need] = []
    milvus = config.components.milvus
    if milvus is not None:
        lite = () if milvus.uri.startswith(_SERVER_SCHEMES) else ("milvus_lite",)
        found.append(Need("components.milvus", "milvus", ("pymilvus", "numpy", *lite)))
    if config.components.neo4j is not None:
        found.append(Need("components.neo4j", "neo4j", ("neo4j",)))
    for index, target in enumerate(config.storage):
        if target.kind == "s3":
            found.append(Need(f"storage[{index}]", "s3", ("boto3", "botocore")))
        elif target.kind == "azure":
            found.append(Need(f"storage[{index}]", "azure", ("azure.storage.blob", "azure.core")))
    return found


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:   # a parent package (``azure`` of ``azure.storage.blob``) is missing
        return False


def missing_extras(config: Config) -> list[str]:
    """One line per config key whose libraries are not installed, naming the extra that brings them."""
    problems = []
    for need in needs(config):
        missing = [m for m in need.modules if not is_installed(m)]
        if missing:
            problems.append(f"`{need.key}` needs the {need.extra!r} extra, which is not installed "
                            f"(missing: {', '.join(missing)}); install it: pip install '{DISTRIBUTION}[{need.extra}]' "
                            f"(in a checkout: .venv/bin/pip install -e '.[{need.extra}]')")
    return problems


def installed_version() -> str:
    """The installed distribution's version (``aegis --version``); a bare checkout has none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"
