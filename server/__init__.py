"""The inference server that runs inside every image. It never downloads anything: the weights
are in the image (HF_HUB_OFFLINE=1), described by /app/manifest.json. Import has no side effects;
`create_app(settings)` builds the app, `python -m server` runs it (or, with
BUILDER_SERVE_MODE=queue, RunPod's queue worker on the same inference path), `python -m server.smoke`
runs the smoke test through the same code path as the predict route."""
