"""The models edged can run: every manifest on the model search path.

The search path is the project's ``models/`` and then the directories a deployment
configures, in order; the first manifest of a name wins. A manifest's kmodel is looked
for next to the manifest, then along the same path, so the project can ship manifests
while the kmodels live elsewhere (a device's flash mount, or the test fixtures).

A model that cannot be used (kmodel absent, manifest invalid) is listed with the reason,
never a crash: one bad file must not stop a daemon that runs other models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from edged.kpu.kmodel import KModel
from edged.resources import shipped
from edged.runtime.decoders import Decoder, build_decoder
from edged.runtime.manifest import ImageInput, ManifestError, ModelManifest, load_manifest
from edged.runtime.verify import load_verified
from edged.vision.preprocess import InputSpec

PROJECT_MODELS = shipped("models")


def model_search_path(configured: Sequence[Path] = ()) -> tuple[Path, ...]:
    """The project's ``models/`` (absent from an installed wheel) then ``configured``."""
    paths = [PROJECT_MODELS] if PROJECT_MODELS.is_dir() else []
    for path in configured:
        if path.resolve() not in {p.resolve() for p in paths}:
            paths.append(path)
    return tuple(paths)


class UnknownModel(LookupError):
    """No manifest on the search path has this name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"no model named '{name}' (known: {', '.join(known) or 'none'})")
        self.name = name


class ModelEntry:
    """A model found on the search path; the kmodel is read and verified on first use."""

    def __init__(self, manifest: ModelManifest, manifest_path: Path, kmodel_path: Path) -> None:
        self.manifest = manifest
        self.manifest_path = manifest_path
        self.kmodel_path = kmodel_path

    @property
    def name(self) -> str:
        return self.manifest.name

    @cached_property
    def kmodel(self) -> KModel:
        """The parsed kmodel, checked against the sha256 and the manifest (once)."""
        return load_verified(self.manifest, self.manifest_path, self.kmodel_path)

    @cached_property
    def input_spec(self) -> InputSpec | None:
        """Pre-processing for an image model; ``None`` for a feature-vector model."""
        image = self.manifest.input
        return image.input_spec() if isinstance(image, ImageInput) else None

    @cached_property
    def decoder(self) -> Decoder:
        """The decoder with the manifest's own parameters."""
        image = self.manifest.input if isinstance(self.manifest.input, ImageInput) else None
        return build_decoder(self.manifest.decoder, self.manifest.labels, image)


@dataclass(frozen=True)
class Listing:
    """One manifest found: its model, or why the model cannot be used."""

    name: str
    manifest_path: Path
    model: ModelEntry | ManifestError

    @property
    def available(self) -> bool:
        return isinstance(self.model, ModelEntry)


class ModelRegistry:
    """Every manifest on a search path, by name."""

    def __init__(self, listings: Sequence[Listing], search_path: Sequence[Path]) -> None:
        self.listings = tuple(listings)
        self.search_path = tuple(search_path)
        self._by_name: dict[str, Listing] = {}
        for listing in self.listings:
            self._by_name.setdefault(listing.name, listing)

    @classmethod
    def discover(cls, paths: Sequence[Path]) -> ModelRegistry:
        """Read every ``*.toml`` in ``paths`` (each a directory, in search order)."""
        for path in paths:
            if not path.is_dir():
                raise NotADirectoryError(f"model directory {path} does not exist")
        listings: list[Listing] = []
        first: dict[str, Path] = {}
        for manifest_path in (m for path in paths for m in sorted(path.glob("*.toml"))):
            listing = _listing(manifest_path, paths)
            if listing.name in first:
                shadowed = ManifestError(
                    manifest_path,
                    [("name", f"'{listing.name}' is already defined by {first[listing.name]}")],
                )
                listing = Listing(listing.name, manifest_path, shadowed)
            first.setdefault(listing.name, manifest_path)
            listings.append(listing)
        return cls(listings, paths)

    @property
    def names(self) -> list[str]:
        """The names of the models that can be used, in search order."""
        return [name for name, listing in self._by_name.items() if listing.available]

    def get(self, name: str) -> ModelEntry:
        """The model called ``name``; :class:`UnknownModel` or the reason it is unavailable."""
        listing = self._by_name.get(name)
        if listing is None:
            raise UnknownModel(name, list(self._by_name))
        if isinstance(listing.model, ManifestError):
            raise listing.model
        return listing.model

    def verify(self) -> list[ManifestError]:
        """Every problem, each kmodel read and checked now (``edged check``, tests)."""
        problems = []
        for listing in self.listings:
            if isinstance(listing.model, ManifestError):
                problems.append(listing.model)
                continue
            try:
                listing.model.kmodel  # noqa: B018 - reading it is what verifies it
            except ManifestError as exc:
                problems.append(exc)
        return problems


def _listing(manifest_path: Path, search_path: Sequence[Path]) -> Listing:
    try:
        manifest = load_manifest(manifest_path)
    except ManifestError as exc:
        return Listing(manifest_path.stem, manifest_path, exc)
    try:
        kmodel_path = _locate(manifest, manifest_path, search_path)
    except ManifestError as exc:
        return Listing(manifest.name, manifest_path, exc)
    return Listing(manifest.name, manifest_path, ModelEntry(manifest, manifest_path, kmodel_path))


def _locate(manifest: ModelManifest, manifest_path: Path, search_path: Sequence[Path]) -> Path:
    """The kmodel next to the manifest, else the first on the search path."""
    file = Path(manifest.file)
    candidates = (
        [file]
        if file.is_absolute()
        else [manifest_path.parent / file, *(path / file for path in search_path)]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = ", ".join(str(p) for p in dict.fromkeys(c.parent for c in candidates))
    raise ManifestError(manifest_path, [("file", f"{manifest.file} not found (looked in {where})")])
