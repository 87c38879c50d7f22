"""Licences as model cards name them (the Hub's `license:` identifiers), and whether each allows
commercial use. A table, not a judgement: a licence that is not here is recorded as not allowing
commercial use until someone reads it and decides; nothing here records an approval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Licence:
    name: str
    spdx: str | None
    commercial_use: bool
    note: str  # why, for the manifest's comment


# Hub identifier -> (name, SPDX identifier, commercial use, why)
_KNOWN: dict[str, tuple[str, str | None, bool, str]] = {
    "apache-2.0": ("Apache License 2.0", "Apache-2.0", True, "permissive"),
    "mit": ("MIT License", "MIT", True, "permissive"),
    "bsd-2-clause": ("BSD 2-Clause License", "BSD-2-Clause", True, "permissive"),
    "bsd-3-clause": ("BSD 3-Clause License", "BSD-3-Clause", True, "permissive"),
    "cc0-1.0": ("Creative Commons Zero v1.0 Universal", "CC0-1.0", True, "public domain dedication"),
    "cc-by-4.0": ("Creative Commons Attribution 4.0", "CC-BY-4.0", True, "attribution required"),
    "cc-by-sa-4.0": ("Creative Commons Attribution Share Alike 4.0", "CC-BY-SA-4.0", True, "attribution, share-alike"),
    "openrail": ("OpenRAIL", None, True, "commercial use allowed under its use restrictions"),
    "openrail++": ("CreativeML Open RAIL++-M", None, True, "commercial use allowed under its use restrictions"),
    "creativeml-openrail-m": ("CreativeML Open RAIL-M", None, True, "commercial use allowed under its use restrictions"),
    "bigscience-openrail-m": ("BigScience Open RAIL-M", None, True, "commercial use allowed under its use restrictions"),
    "bigcode-openrail-m": ("BigCode Open RAIL-M", None, True, "commercial use allowed under its use restrictions"),
    "flux-1-dev-non-commercial-license": ("FLUX.1 [dev] Non-Commercial License", None, False, "non-commercial"),
    "coqui-public-model-license": ("Coqui Public Model License 1.0.0", None, False, "non-commercial"),
}
_NON_COMMERCIAL_PREFIXES = ("cc-by-nc-",)


def _one(identifier: str, card_name: str | None) -> Licence:
    key = identifier.strip().lower()
    if key == "other" and card_name:
        key = card_name.strip().lower()
    known = _KNOWN.get(key)
    if known is not None:
        return Licence(*known)
    if key.startswith(_NON_COMMERCIAL_PREFIXES):
        return Licence(f"Creative Commons {key.upper()}", key.upper(), False, "non-commercial (NC)")
    name = card_name or identifier
    return Licence(name, None, False,
                   "not in builder's licence table: recorded as not allowing commercial use until someone reads it "
                   "and decides (then set commercial_use, and record an approval for production)")


def licence_from_card(card: dict[str, Any]) -> Licence | None:
    """The licence the card names (license, license_name); None when it names none."""
    value = card.get("license")
    if not value:
        return None
    values = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    licences = [_one(v, card.get("license_name")) for v in values]
    if len(licences) == 1:
        return licences[0]
    return Licence("; ".join(lic.name for lic in licences), None, all(lic.commercial_use for lic in licences),
                   "several licences: commercial use only where each allows it")
