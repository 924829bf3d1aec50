"""A MONAI bundle folder read the way MONAI reads it, with errors a site can act on.

The configs are parsed with ``monai.bundle.ConfigParser``, ``bundle_root`` set and the folder on
``sys.path`` while parts are built (as ``monai.bundle.run`` does), so ``scripts.*`` targets resolve
to their own bundle's. Parts are built only when asked for: TorchScript weights need no
``network_def``, nor its optional packages. MONAI's 25-line ``OptionalImportError`` becomes one
sentence naming the package and its install command (``build``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pipelines.model_folder import CONFIG_NAMES, ModelFolderError

#: Packages that bundles' networks import optionally, and how radnode installs them.
EXTRAS = {
    "nibabel": "python3 -m pip install 'radnode[bundles]'",
    "torchvision": "python3 -m pip install 'torchvision==<the release made for your torch>' "
                   "(PyPI's torchvision needs PyPI's CUDA build of torch)",
}
_MISSING = re.compile(r"No module named '([^']+)'")


class BundleError(ModelFolderError):
    """The bundle cannot run in radnode; the message names the key or the package."""


@dataclass
class Bundle:
    """A parsed bundle: its folder, config parser, and name and version from metadata.json."""

    folder: Path
    parser: Any  # monai.bundle.ConfigParser
    name: str
    version: str
    #: configs/metadata.json (empty when the bundle has none): network_data_format and the like.
    metadata: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.parser.get()
        return config

    def has(self, key: str) -> bool:
        return key in self.config

    def build(self, key: str) -> Any:
        """The instantiated content of ``key`` (``network_def``, ``preprocessing``, ...)."""
        if not self.has(key):
            raise BundleError(f"{self.folder}: {config_path(self.folder).name} has no {key!r}")
        try:
            with _own_scripts(self.folder):
                return self.parser.get_parsed_content(key, instantiate=True)
        except Exception as exc:  # noqa: BLE001 (ConfigParser wraps every cause in RuntimeError)
            raise BundleError(f"{self.folder}: {key!r} of the bundle cannot be built: {root_cause(exc)}") from exc

    @property
    def label(self) -> str:
        """``name version`` for the algorithm identification of SEG and SR."""
        return f"{self.name} {self.version}".strip()


def config_path(folder: Path) -> Path:
    """The bundle's inference config (json or yaml); BundleError when there is none."""
    for name in CONFIG_NAMES:
        path = Path(folder) / "configs" / name
        if path.is_file():
            return path
    raise BundleError(f"{folder}/configs has none of {', '.join(CONFIG_NAMES)}")


def read_bundle(folder: Path) -> Bundle:
    """Parse the bundle's inference config and metadata; nothing is instantiated yet."""
    from monai.bundle import ConfigParser

    folder = Path(folder).resolve()
    path = config_path(folder)
    parser = ConfigParser()
    try:
        parser.read_config(str(path))
    except Exception as exc:  # noqa: BLE001 (json and yaml errors alike)
        raise BundleError(f"{path} cannot be read: {root_cause(exc)}") from exc
    parser["bundle_root"] = str(folder)
    metadata = _metadata(folder)
    name = str(metadata.get("name", folder.name))
    version = str(metadata.get("version", "unversioned"))
    return Bundle(folder, parser, name, version, metadata)


@contextmanager
def _own_scripts(folder: Path) -> Iterator[None]:
    """The bundle's folder first on ``sys.path`` while its parts are built (what ``monai.bundle.run``
    does, for ``scripts.*`` targets), and no other bundle's ``scripts`` package in ``sys.modules``.

    Every bundle calls its package ``scripts``: two bundles in one worker would otherwise share
    whichever was imported first. Built objects keep their classes; the modules are set aside.
    """
    def scripts_modules() -> dict[str, ModuleType]:
        return {name: module for name, module in sys.modules.items() if name == "scripts" or name.startswith("scripts.")}

    others = scripts_modules()
    for name in others:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name in scripts_modules():
            del sys.modules[name]
        sys.modules.update(others)


def _metadata(folder: Path) -> dict[str, Any]:
    path = folder / "configs" / "metadata.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"{path} is not a JSON object")
    return meta


def root_cause(exc: BaseException) -> str:
    """The one line that says what is wrong, with the install command for a missing package."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        match = _MISSING.search(str(item))
        if match:
            package = match.group(1).split(".")[0]
            how = EXTRAS.get(package, f"python3 -m pip install {package}")
            return f"No module named {package!r}: install it with {how}"
    last = chain[-1]
    return f"{type(last).__name__}: {str(last).strip().splitlines()[0] if str(last).strip() else ''}"
