"""The weights, outside the engine: the plan, the host's verified cache, and the layers the
builder makes from it.

    plan (layout.py)  -> fetch into the cache (builder/fetch, in this process)
                      -> one deterministic, uncompressed tar layer per large file, small files
                         bundled (tar.py, layers.py), digests known from the cache
                      -> pushed straight from the cache files, spliced into the image the
                         engine built (builder/compose.py), smoke-tested through read-only
                         bind mounts of the same files at the same paths (layers.smoke_mounts)
"""

from builder.weights.layers import Mount, WeightsLayer, frames, smoke_mounts, weights_layers
from builder.weights.layout import BLOB_DIR, MODELS_ROOT, SMALL, PlannedLayer, WeightsPlan, model_dir, weights_plan

__all__ = ["BLOB_DIR", "MODELS_ROOT", "SMALL", "Mount", "PlannedLayer", "WeightsLayer", "WeightsPlan", "frames",
           "model_dir", "smoke_mounts", "weights_layers", "weights_plan"]
