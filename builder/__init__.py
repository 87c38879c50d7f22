"""builder: bake model weights into versioned, verified inference images.

Kept free of imports: `builder.fetch`, `builder.errors` and `builder.redact` are copied into the
weights build stage, where only the standard library and huggingface_hub exist.
"""

__version__ = "0.1.0"
