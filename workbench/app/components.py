"""The component map as plain records (for the store's attrs), and read back for the app.

``component_records`` needs the loaded model (the runner calls it when it writes a store);
``component_frame`` reads the records from a store, so the app never loads a model to draw it.
"""

from __future__ import annotations

import json

import pandas as pd
import xarray as xr

ATTR = "component_map"
COLUMNS = ["layer", "role", "path", "topology", "n_params"]


def component_records(model) -> list[dict]:
    """One record per component: layer, role, module path, topology and parameter count.

    A parameter shared by several modules (tied weights) counts once per component that owns it.
    """
    from workbench.architectures import component_map

    out = []
    for c in component_map(model).components:
        module = model.get_submodule(c.path)
        out.append({"layer": int(c.layer), "role": c.role, "path": c.path, "topology": c.topology,
                    "n_params": int(sum(p.numel() for p in module.parameters()))})
    return out


def component_frame(ds: xr.Dataset) -> pd.DataFrame | None:
    """The records stored under ``attrs['component_map']`` (JSON), or None when absent."""
    raw = ds.attrs.get(ATTR)
    if raw is None:
        return None
    records = json.loads(raw) if isinstance(raw, str) else raw
    if isinstance(records, dict):  # {"components": [...]} is accepted too
        records = records.get("components", [])
    frame = pd.DataFrame(records)
    missing = [c for c in ("layer", "role") if c not in frame]
    if missing:
        raise ValueError(f"component_map records lack {', '.join(missing)}; "
                         f"expected fields {', '.join(COLUMNS)}")
    for col in COLUMNS:
        if col not in frame:
            frame[col] = pd.NA
    return frame[COLUMNS + [c for c in frame if c not in COLUMNS]]
